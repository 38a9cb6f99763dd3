"""The word-level tokenizer builder (``visprune.demo.tokenizer``): the demo models' tokenizers
rebuild as shipped, and the general builder puts every token at its id."""

from __future__ import annotations

from pathlib import Path

import pytest

from visprune import demo
from visprune.demo import video_model
from visprune.demo.tokenizer import build_tokenizer, word_level_tokenizer


@pytest.mark.parametrize(
    ("build", "folder"),
    [(build_tokenizer, "checkpoint"), (video_model.build_tokenizer, "video_checkpoint")],
    ids=["image", "video"],
)
def test_demo_tokenizers_rebuild_byte_identical(tmp_path, build, folder):
    shipped = Path(demo.__file__).parent / folder / "tokenizer.json"
    build().save_pretrained(tmp_path)
    assert (tmp_path / "tokenizer.json").read_bytes() == shipped.read_bytes()


def test_every_token_sits_at_its_id_and_unknown_words_at_unk():
    vocabulary = {"<pad>": 0, "<unk>": 1, "<s>": 2, "</s>": 3, "w7": 7, "<|image_pad|>": 9}
    tokenizer = word_level_tokenizer(vocabulary, specials=["<|image_pad|>"])
    ids = tokenizer("w7 <|image_pad|> w8", add_special_tokens=False)["input_ids"]
    assert ids == [7, 9, 1]
    assert tokenizer.decode(ids, skip_special_tokens=True) == "w7"  # <unk> and the image skipped


def test_media_plain_tokens_and_splitting():
    tokenizer = word_level_tokenizer(
        ["<pad>", "<unk>", "<s>", "</s>", "<img>", "\n\n", "a", "b", ".", "a."],
        media={"image_token": "<img>"},
        plain=["\n\n"],
    )
    assert tokenizer.image_token == "<img>"
    assert tokenizer("a\n\nb <img>", add_special_tokens=False)["input_ids"] == [6, 5, 7, 4]
    assert "\n\n" not in tokenizer.all_special_tokens  # plain: kept when decoding
    assert tokenizer("a.", add_special_tokens=False)["input_ids"] == [9]  # whitespace only
    roles = {"pad_token": "<pad>", "unk_token": "<unk>"}
    split = word_level_tokenizer(
        ["<pad>", "<unk>", "a", "."], roles=roles, punctuation=True, lowercase=True
    )
    assert split("A.", add_special_tokens=False)["input_ids"] == [2, 3]


def test_a_vocabulary_without_unknown_token_is_refused():
    with pytest.raises(ValueError, match="unk_token"):
        word_level_tokenizer(["<pad>", "a"], roles={"pad_token": "<pad>"})
