"""Config, processor and save/load helpers of the demo LLaVA (offline, no hub); its tokenizer is
:func:`visprune.demo.tokenizer.build_tokenizer`."""

from __future__ import annotations

import os
from typing import Any

from . import task
from .tokenizer import IMAGE, build_tokenizer

#: Features from hidden_states[-2] of a 1-layer tower = its embedding output (one patch per token).
VISION_FEATURE_LAYER = -2

DEFAULT_SIZES: dict[str, int] = {
    "vision_hidden": 128,
    "text_hidden": 128,
    "text_layers": 3,
    "text_heads": 4,
    "text_intermediate": 384,
}


def build_image_processor():
    """The CLIP image processor (PIL backend) at the demo resolution and normalisation."""
    try:
        from transformers import CLIPImageProcessorPil as cls
    except ImportError:  # older transformers
        from transformers import CLIPImageProcessor as cls
    return cls(
        do_resize=True,
        size={"shortest_edge": task.IMAGE_SIZE},
        resample=3,
        do_center_crop=True,
        crop_size={"height": task.IMAGE_SIZE, "width": task.IMAGE_SIZE},
        do_rescale=True,
        rescale_factor=1 / 255,
        do_normalize=True,
        image_mean=list(task.MEAN),
        image_std=list(task.STD),
        do_convert_rgb=True,
    )


#: Renders a conversation as the demo prompt ``question <image> question``
#: (:func:`task.prompt_text`), so chat-template callers (``visprune generate``, lmms-eval) send
#: the model exactly what it was trained on. Text parts are joined; one ``<image>`` per image.
CHAT_TEMPLATE = (
    "{%- set ns = namespace(text='', images='') -%}"
    "{%- for message in messages -%}"
    "{%- if message['content'] is string -%}"
    "{%- set ns.text = (ns.text ~ ' ' ~ message['content']) | trim -%}"
    "{%- else -%}{%- for part in message['content'] -%}"
    "{%- if part['type'] == 'text' -%}{%- set ns.text = (ns.text ~ ' ' ~ part['text']) | trim -%}"
    "{%- elif part['type'] in ('image', 'image_url') -%}"
    "{%- set ns.images = (ns.images ~ ' " + IMAGE + "') | trim -%}"
    "{%- endif -%}{%- endfor -%}{%- endif -%}"
    "{%- endfor -%}"
    "{{ ns.text }} {{ ns.images }} {{ ns.text }}"
)


def build_processor(tokenizer=None):
    """A ``LlavaProcessor`` expanding ``<image>`` into ``GRID * GRID`` image tokens, with the
    demo's chat template (:data:`CHAT_TEMPLATE`)."""
    from transformers import LlavaProcessor

    return LlavaProcessor(
        chat_template=CHAT_TEMPLATE,
        image_processor=build_image_processor(),
        tokenizer=tokenizer or build_tokenizer(),
        patch_size=task.PATCH,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,  # the CLS token, dropped by the "default" strategy
        image_token=IMAGE,
    )


def build_config(tokenizer=None, **sizes: int):
    """The ``LlavaConfig``: 1-layer CLIP tower, features from its embedding output, small Llama."""
    from transformers import LlavaConfig

    tokenizer = tokenizer or build_tokenizer()
    s = {**DEFAULT_SIZES, **sizes}
    config = LlavaConfig(
        vision_config=vision_config(s, task.IMAGE_SIZE),
        text_config=text_config(tokenizer, s),
        image_token_index=tokenizer.convert_tokens_to_ids(IMAGE),
        vision_feature_layer=VISION_FEATURE_LAYER,
        vision_feature_select_strategy="default",
        image_seq_length=task.NUM_CELLS,
        projector_hidden_act="gelu",
    )
    return config


def vision_config(sizes: dict[str, int], image_size: int):
    """The demo models' 1-layer ``CLIPVisionConfig`` on ``image_size`` px images (or frames),
    width ``sizes["vision_hidden"]`` (:data:`DEFAULT_SIZES`)."""
    from transformers import CLIPVisionConfig

    return CLIPVisionConfig(
        hidden_size=sizes["vision_hidden"],
        intermediate_size=2 * sizes["vision_hidden"],
        num_hidden_layers=1,
        num_attention_heads=2,
        image_size=image_size,
        patch_size=task.PATCH,
        projection_dim=sizes["vision_hidden"],
    )


def text_config(tokenizer, sizes: dict[str, int]):
    """The demo models' small ``LlamaConfig`` over ``tokenizer``'s vocabulary, sized by
    ``sizes`` (:data:`DEFAULT_SIZES`)."""
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=sizes["text_hidden"],
        intermediate_size=sizes["text_intermediate"],
        num_hidden_layers=sizes["text_layers"],
        num_attention_heads=sizes["text_heads"],
        num_key_value_heads=sizes["text_heads"],
        max_position_embeddings=256,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        tie_word_embeddings=False,
    )


def build_model(config=None, seed: int = 0):
    """A freshly initialised ``LlavaForConditionalGeneration`` (train mode)."""
    from transformers import LlavaForConditionalGeneration

    tokenizer = build_tokenizer()
    return initialise(
        LlavaForConditionalGeneration, config or build_config(tokenizer), tokenizer, seed
    )


def initialise(model_class: type, config, tokenizer, seed: int):
    """``model_class(config)`` initialised from ``seed``, its generation config set to greedy
    two-token answers with ``tokenizer``'s special tokens (train mode)."""
    import torch

    torch.manual_seed(seed)
    model = model_class(config)
    gen = model.generation_config
    gen.pad_token_id = tokenizer.pad_token_id
    gen.eos_token_id = tokenizer.eos_token_id
    gen.bos_token_id = tokenizer.bos_token_id
    gen.do_sample = False
    gen.max_new_tokens = 2
    return model


def save(model, directory: str | os.PathLike, processor=None, extra: dict[str, Any] | None = None):
    """Write weights (safetensors), configs, tokenizer and processor so that
    ``LlavaForConditionalGeneration.from_pretrained`` and ``AutoProcessor.from_pretrained`` load
    them. Writes to a temporary folder first, so an interrupted save leaves the old one intact."""
    import json
    import shutil

    directory = os.fspath(directory)
    tmp = directory.rstrip("/") + ".tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp, safe_serialization=True)
    to_hub_layout(os.path.join(tmp, "model.safetensors"))
    (processor or build_processor()).save_pretrained(tmp)
    _write_padding_side(tmp, "left")
    if extra is not None:
        with open(os.path.join(tmp, "demo_info.json"), "w") as f:
            json.dump(extra, f, indent=2)
    os.makedirs(directory, exist_ok=True)
    for name in os.listdir(tmp):  # replace file by file; keep unrelated files (train_log.txt)
        os.replace(os.path.join(tmp, name), os.path.join(directory, name))
    shutil.rmtree(tmp, ignore_errors=True)


def _write_padding_side(directory: str, side: str) -> None:
    """Record ``padding_side`` in ``tokenizer_config.json``: transformers 5 does not save it, and
    a batch padded on the right gets no answer for its shorter rows from ``generate``."""
    import json

    path = os.path.join(directory, "tokenizer_config.json")
    with open(path) as f:
        config = json.load(f)
    config["padding_side"] = side
    with open(path, "w") as f:
        json.dump(config, f, indent=2)
        f.write("\n")


#: transformers 5 writes the CLIP tower's weights without the ``vision_model`` level that Hub
#: checkpoints (and vLLM's loader) have; transformers loads both layouts.
TOWER_PREFIX, HUB_TOWER_PREFIX = "vision_tower.", "vision_tower.vision_model."


def to_hub_layout(weights: str | os.PathLike) -> None:
    """Rename the vision tower's weights in a safetensors file to the Hub layout, in place
    (``vision_tower.embeddings...`` -> ``vision_tower.vision_model.embeddings...``), so that
    vLLM, which reads Hub-layout names only, serves the checkpoint as well."""
    from safetensors.torch import load_file, save_file

    state = load_file(weights)
    renamed = {
        HUB_TOWER_PREFIX + name[len(TOWER_PREFIX) :]
        if name.startswith(TOWER_PREFIX) and not name.startswith(HUB_TOWER_PREFIX)
        else name: tensor
        for name, tensor in state.items()
    }
    save_file(renamed, weights, metadata={"format": "pt"})


def load(directory: str | os.PathLike):
    """``(model, processor)`` from a folder written by :func:`save`, in eval mode."""
    from transformers import AutoProcessor, LlavaForConditionalGeneration

    model = LlavaForConditionalGeneration.from_pretrained(directory).eval()
    processor = AutoProcessor.from_pretrained(directory)
    return model, processor
