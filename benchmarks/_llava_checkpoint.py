"""A random-weight LLaVA-1.5-shaped checkpoint in the Hub layout, for ``benchmarks/serving.py``:
the model of ``benchmarks/end_to_end.py`` (Llama LM, CLIP tower at 336 px: 576 visual tokens),
a word-level tokenizer over its whole vocabulary (the image token at ``IMAGE_TOKEN``) and a
LLaVA processor whose chat template puts the image before the text."""

from __future__ import annotations

from pathlib import Path

from _checkpoint import image_then_text, save_model, word_tokenizer
from end_to_end import IMAGE_TOKEN, build_model

#: One image, then the prompt text: every request's text is the same length.
CHAT_TEMPLATE = image_then_text("<image>")


def write_checkpoint(directory: Path, hidden: int, layers: int) -> None:
    """Save the random-weight model (``hidden`` wide, ``layers`` deep), its tokenizer and its
    processor to ``directory``."""
    from transformers import CLIPImageProcessor, LlavaProcessor

    save_model(build_model(hidden, layers), directory, hub_tower=True)
    image_processor = CLIPImageProcessor(
        size={"shortest_edge": 336}, crop_size={"height": 336, "width": 336}
    )
    LlavaProcessor(
        image_processor=image_processor,
        tokenizer=word_tokenizer({"<image>": IMAGE_TOKEN}),
        patch_size=14,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,
        image_token="<image>",
        chat_template=CHAT_TEMPLATE,
    ).save_pretrained(directory)
