"""Tiny checkpoints on disk, in the layout of the Hub's: model, processor, tokenizer, chat template.

lmms-eval's model classes load a checkpoint with ``from_pretrained`` from a path; these helpers
save a :func:`tiny_vlms.tiny` model of a family with a processor of the family's own classes, so
those classes load it as they load a real one. The tokenizer is word-level over the tiny models'
vocabulary of 128 (``w3`` ... ``w99`` are words; the special tokens sit at the ids ``tiny_vlms``
uses), and the chat template renders a user turn the way the family's real template does (its
image mark in place of each image, then the text).

Qwen3-VL's and InternVL's processors hold a video processor, which needs torchvision.
"""

from __future__ import annotations

from pathlib import Path

from transformers import PreTrainedTokenizerFast

import tiny_vlms
from tiny_vlms import IMG, SPECIAL, VE, VID, VS
from visprune.demo.tokenizer import word_level_tokenizer

#: Words a request may use; every other id of the vocabulary is a special token or unused.
WORDS = [f"w{i}" for i in range(3, 100)]

#: A user turn: each image as the family's image mark, then the text; the answer follows.
_TEMPLATE = (
    "{%- for message in messages -%}"
    "{{ '<start> ' + message['role'] + ' ' }}"
    "{%- if message['content'] is string -%}{{ message['content'] }}"
    "{%- else -%}{%- for part in message['content'] -%}"
    "{%- if part['type'] == 'image' -%}{{ ' IMAGE ' }}"
    "{%- elif part['type'] == 'video' -%}{{ ' VIDEO ' }}"
    "{%- else -%}{{ part['text'] }}{%- endif -%}"
    "{%- endfor -%}{%- endif -%}{{ ' <end> ' }}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '<start> assistant ' }}{%- endif -%}"
)

#: Per family: the special tokens at (image, video, start, end) ids, the tokenizer's named special
#: tokens, and the text the chat template writes for an image and for a video.
_SPECIALS = {
    "qwen3_vl": (
        {IMG: "<|image_pad|>", VID: "<|video_pad|>", VS: "<|vision_start|>", VE: "<|vision_end|>"},
        {},
        "<|vision_start|><|image_pad|><|vision_end|>",
        "<|vision_start|><|video_pad|><|vision_end|>",
    ),
    "gemma3": (
        {IMG: "<image_soft_token>", VS: "<start_of_image>", VE: "<end_of_image>"},
        {
            "image_token": "<image_soft_token>",
            "boi_token": "<start_of_image>",
            "eoi_token": "<end_of_image>",
        },
        "<start_of_image>",
        "",
    ),
    "internvl": (
        {IMG: "<IMG_CONTEXT>", VID: "<video>", VS: "<img>", VE: "</img>"},
        {
            "start_image_token": "<img>",
            "end_image_token": "</img>",
            "context_image_token": "<IMG_CONTEXT>",
            "video_token": "<video>",
        },
        "<IMG_CONTEXT>",
        "<video>",
    ),
}
_SPECIALS["qwen3_vl_moe"] = _SPECIALS["qwen3_vl"]


#: The role tokens at the tiny models' ids: padding 0, end of sequence 1, unknown 2.
ROLES = {"pad_token": "<pad>", "eos_token": "</s>", "unk_token": "<unk>"}
#: The chat template's own words, on ids no tiny model treats specially.
CHAT_WORDS = dict(enumerate(("<start>", "<end>", "user", "assistant", "system"), 110))


def word_tokenizer(
    specials: dict[int, str], named: dict[str, str], words: dict[int, str] | None = None
) -> PreTrainedTokenizerFast:
    """A word-level tokenizer over the tiny models' 128 ids: :data:`ROLES`, :data:`WORDS`,
    ``specials`` (special tokens) and ``words`` at their ids, ``x<id>`` on every other id;
    ``named`` are the tokenizer attributes a processor reads (``image_token``)."""
    vocabulary = ["<pad>", "</s>", "<unk>", *WORDS]
    vocabulary += [f"x{i}" for i in range(len(vocabulary), 128)]
    for index, token in {**specials, **(words or {})}.items():
        vocabulary[index] = token
    return word_level_tokenizer(
        vocabulary, roles=ROLES, media=named, specials=list(specials.values())
    )


def tokenizer(family: str) -> PreTrainedTokenizerFast:
    """A word-level tokenizer with ``family``'s special tokens at the tiny models' ids."""
    specials, named, _, _ = _SPECIALS[family]
    return word_tokenizer(specials, named, CHAT_WORDS)


def processor(family: str):
    """``family``'s own processor classes, sized for :func:`tiny_vlms.tiny`."""
    _, _, image_mark, video_mark = _SPECIALS[family]
    words = tokenizer(family)
    template = _TEMPLATE.replace("IMAGE", image_mark).replace("VIDEO", video_mark)
    if family in tiny_vlms.QWEN3:
        from transformers import Qwen2VLImageProcessor, Qwen3VLProcessor, Qwen3VLVideoProcessor

        patches = {"patch_size": 14, "merge_size": 2, "temporal_patch_size": 2}
        return Qwen3VLProcessor(
            image_processor=Qwen2VLImageProcessor(**patches),
            tokenizer=words,
            video_processor=Qwen3VLVideoProcessor(**patches),
            chat_template=template,
        )
    if family == "gemma3":
        from transformers import Gemma3ImageProcessor, Gemma3Processor

        side = {"height": 56, "width": 56}
        return Gemma3Processor(
            image_processor=Gemma3ImageProcessor(size=side),
            tokenizer=words,
            image_seq_length=tiny_vlms.GEMMA3_TOKENS,
            chat_template=template,
        )
    if family == "internvl":
        from transformers import GotOcr2ImageProcessor, InternVLProcessor, InternVLVideoProcessor

        side = {"height": 32, "width": 32}
        return InternVLProcessor(
            image_processor=GotOcr2ImageProcessor(size=side, crop_to_patches=True, max_patches=4),
            tokenizer=words,
            video_processor=InternVLVideoProcessor(size=side),
            image_seq_length=tiny_vlms.INTERNVL_TILE_TOKENS,
            chat_template=template,
        )
    raise ValueError(f"no tiny checkpoint for {family!r}; choose one of {sorted(_SPECIALS)}")


def save(family: str, path: Path) -> Path:
    """Save a tiny ``family`` model with its processor and tokenizer to ``path``; ``path``."""
    model = tiny_vlms.tiny(family)
    # A generated placeholder is no image; and without end-of-sequence (id 1) every row runs to
    # max_new_tokens, so the random model's outputs compare token for token.
    model.generation_config.suppress_tokens = [1, *SPECIAL]
    model.save_pretrained(path)
    processor(family).save_pretrained(path)
    return path
