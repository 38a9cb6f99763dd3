"""What the random-weight checkpoints of ``benchmarks/serving.py`` share: a word-level tokenizer
over the whole vocabulary, a chat template that puts the image before the text, and saving in the
Hub layout.

Every request's text is the same number of words (``w<id>``), each one token, so the runs differ
only in what the method keeps.
"""

from __future__ import annotations

from pathlib import Path

from visprune.demo.model import to_hub_layout
from visprune.demo.tokenizer import word_level_tokenizer

VOCAB = 32000


def word_tokenizer(specials: dict[str, int]):
    """A word-level tokenizer over ``VOCAB`` ids: ``<pad> <unk> <s> </s>`` at 0-3, ``w<id>``
    for each further id not in ``specials`` and the ``specials`` (special tokens) at theirs."""
    vocab = {"<pad>": 0, "<unk>": 1, "<s>": 2, "</s>": 3}
    taken = set(specials.values())
    vocab.update({f"w{i}": i for i in range(4, VOCAB) if i not in taken})
    vocab.update(specials)
    return word_level_tokenizer(vocab, specials=list(specials))


def image_then_text(image_mark: str) -> str:
    """A chat template writing each image as ``image_mark`` and a space, each text as given (so
    every request's text is the same length)."""
    return (
        "{%- for message in messages -%}{%- for part in message['content'] -%}"
        "{%- if part['type'] == 'text' -%}{{ part['text'] }}"
        "{%- else -%}" + image_mark + " {% endif -%}{%- endfor -%}{%- endfor -%}"
    )


def save_model(model, directory: Path, hub_tower: bool) -> None:
    """Save ``model`` with no end of sequence (every answer runs to ``max_tokens``), its CLIP
    tower's weights under the Hub's names (the only ones vLLM reads) if ``hub_tower``."""
    model.generation_config.eos_token_id = None
    model.save_pretrained(directory)
    if hub_tower:
        to_hub_layout(Path(directory) / "model.safetensors")
