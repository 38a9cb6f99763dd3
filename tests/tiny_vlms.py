"""Tiny in-process vision-language models and processor-like inputs for the adapter tests.

The models come from :mod:`tiny_vlm_models` (:func:`tiny`, with random weights seeded by
``seed``, so two calls with the same arguments give identical weights); the tests import them
from here with their inputs. The inputs imitate what the Hugging Face processors return:
``input_ids`` with one placeholder token per visual feature, the matching pixel tensors, grids
and sizes, and ``attention_mask``. Everything runs in milliseconds on a CPU.

Families: ``llava``, ``llava_next``, ``llava_next_video`` and ``llava_onevision`` (images and
video), ``qwen2_5_vl`` (images and video) and ``qwen2_vl``, ``qwen3_vl`` and ``qwen3_vl_moe``
(images and video), ``gemma3`` (images between begin/end-of-image tokens, ``token_type_ids`` for
its bidirectional image blocks, sliding-window layers mixed with full-attention ones) and
``internvl`` (images of several tiles each).

Build one unpadded prompt with :func:`sample` and a left-padded batch of prompts with
:func:`collate`; :func:`inputs` is the shortcut for a batch of same-shaped prompts.
"""

from __future__ import annotations

import torch
from torch import Tensor

from tiny_vlm_models import (
    FAMILIES,
    GEMMA3_TOKENS,
    GEMMA3_WINDOW,
    IMG,
    INTERNVL_TILE_TOKENS,
    PAD,
    PINPOINTS,
    QWEN,
    QWEN3,
    VE,
    VID,
    VS,
    tiny,
)

#: Names the tests import from here with the inputs (``GEMMA3_WINDOW`` only for them).
__all__ = [
    "CASES",
    "DEFAULT_SIZE",
    "FAMILIES",
    "GEMMA3_TOKENS",
    "GEMMA3_WINDOW",
    "GENERATE",
    "IMG",
    "INTERNVL_TILE_TOKENS",
    "PAD",
    "QWEN",
    "QWEN3",
    "SPECIAL",
    "TIMESTAMP",
    "VE",
    "VID",
    "VIDEO",
    "VS",
    "collate",
    "inputs",
    "ragged_samples",
    "sample",
    "tiny",
    "tiny_demo_model",
    "token_counts",
    "visual_mask",
]

#: Ids a tiny model must never generate (a generated placeholder breaks the next step).
SPECIAL = (IMG, VID, VS, VE)
#: Greedy generation settings for every test.
GENERATE = {"do_sample": False, "suppress_tokens": list(SPECIAL), "max_new_tokens": 6}
#: Families with a video input in these tests.
VIDEO = frozenset({"llava_next_video", "llava_onevision", "qwen2_5_vl", "qwen3_vl", "qwen3_vl_moe"})
#: Qwen3-VL wraps each video frame in its own timestamp and vision start/end tokens.
TIMESTAMP = 30
#: Every (family, video) pair.
CASES = [(family, False) for family in FAMILIES] + [
    (family, True) for family in FAMILIES if family in VIDEO
]
#: Default (H, W) of one image, per family.
DEFAULT_SIZE = {
    "llava": (28, 28),
    "llava_next": (28, 56),
    "llava_next_video": (56, 112),
    "llava_onevision": (56, 112),
    "qwen2_5_vl": (4, 6),  # Qwen: (h, w) in 14-px patches
    "qwen2_vl": (4, 6),
    "qwen3_vl": (4, 6),
    "qwen3_vl_moe": (4, 6),
    "internvl": 3,  # InternVL: tiles of the image, thumbnail included (2 tiles + thumbnail)
    "gemma3": (56, 56),
}


def _tiles(family: str, size: tuple[int, int]) -> int:
    from transformers.models.llava_next.modeling_llava_next import image_size_to_num_patches

    tile = 28 if family == "llava_next" else 56
    return image_size_to_num_patches(list(size), PINPOINTS[family], tile)


def token_counts(family: str, model, visuals: list[dict]) -> list[int]:
    """Placeholder tokens that each image or video of one prompt (from :func:`sample`) expands to.

    Uses the model class's own ``get_image_features`` (not an instance wrapper), so it works and
    records nothing while a pruning handle is applied. OneVision prompts with several images use
    only the base tile of each, as the model does.
    """
    if family in QWEN:
        return [int(v["grid"].prod()) // 4 for v in visuals]
    if family == "internvl":
        return [v["pixel_values"].shape[0] * INTERNVL_TILE_TOKENS for v in visuals]
    if family == "gemma3":
        return [GEMMA3_TOKENS] * len(visuals)
    if visuals and "pixel_values_videos" in visuals[0]:
        # 2x2 pooled grid per frame; OneVision closes each video with one newline
        closing = 1 if family == "llava_onevision" else 0
        return [v["pixel_values_videos"].shape[1] * 4 + closing for v in visuals]
    if family == "llava" or not visuals:
        return [4] * len(visuals)
    batch = collate([{"family": family, "input_ids": torch.zeros(1), "visuals": visuals}])
    base = model.model
    extra = {}
    if family == "llava_onevision":
        extra["batch_num_images"] = torch.tensor([len(visuals)])
    with torch.no_grad():
        output = type(base).get_image_features(
            base, batch["pixel_values"], batch["image_sizes"], **extra
        )
    return [len(features) for features in output.pooler_output]


def _visual(family: str, *, video: bool, size, frames: int, generator) -> dict:
    """Pixel tensors of one image or video for ``family``."""
    if family in QWEN:
        t = frames if video else 1
        h, w = size if size is not None else ((4, 4) if video else DEFAULT_SIZE[family])
        pixels = torch.randn(t * h * w, 3 * 2 * 14 * 14, generator=generator)
        return {"pixels": pixels, "grid": torch.tensor([t, h, w]), "video": video}
    if family == "internvl":  # the model has no video input: frames are one-tile images
        tiles = size if size is not None else DEFAULT_SIZE[family]
        return {"pixel_values": torch.randn(tiles, 3, 32, 32, generator=generator)}
    if video:
        return {"pixel_values_videos": torch.randn(1, frames, 3, 56, 56, generator=generator)}
    if family == "llava":
        return {"pixel_values": torch.randn(1, 3, 28, 28, generator=generator)}
    if family == "gemma3":
        return {"pixel_values": torch.randn(1, 3, 56, 56, generator=generator)}
    size = tuple(size) if size is not None else DEFAULT_SIZE[family]
    side = 28 if family == "llava_next" else 56
    pixels = torch.randn(1, _tiles(family, size), 3, side, side, generator=generator)
    return {"pixel_values": pixels, "image_sizes": torch.tensor([size])}


def sample(
    family: str,
    model,
    *,
    video: bool = False,
    images: int = 1,
    prefix: int = 3,
    suffix: int = 5,
    size: tuple[int, int] | list | None = None,
    frames: int = 2,
    seed: int = 1,
) -> dict:
    """One unpadded prompt with ``images`` images (or videos) between text, as a processor would.

    The prompt is ``prefix`` text tokens, then each image (for Qwen, Gemma 3 and InternVL wrapped
    in vision start/end tokens, InternVL's ``<img>`` / ``</img>``) followed by one separator text
    token, then ``suffix`` text tokens.

    Parameters
    ----------
    family : str
        One of :data:`FAMILIES`.
    model : PreTrainedModel
        A model of that family (used to count the placeholder tokens).
    video : bool
        Videos instead of images (onevision and qwen).
    images : int
        Number of images or videos in the prompt.
    prefix, suffix : int
        Text tokens before the first and after the last image.
    size : tuple or list of tuples, optional
        Image size: (H, W) in pixels for llava_next/onevision, (h, w) in 14-px patches for Qwen,
        the tile count (thumbnail included) for InternVL; one per image when a list.
    frames : int
        Video frames (onevision) or temporal patch groups (qwen).
    seed : int
        Seed of the pixel values.

    Returns
    -------
    dict
        ``{"input_ids": (L,), "visuals": [...]}`` (plus ``mm_token_type_ids`` for Qwen, the
        token types for Gemma 3); turn one or more of these into model inputs with :func:`collate`.
    """
    generator = torch.Generator().manual_seed(seed)
    sizes = size if isinstance(size, list) else [size] * images
    token = VID if video else IMG
    ids = list(range(1, 1 + prefix))
    types = [0] * prefix
    visuals = [
        _visual(family, video=video, size=sizes[number], frames=frames, generator=generator)
        for number in range(images)
    ]
    kind = 2 if video else 1
    for number, count in enumerate(token_counts(family, model, visuals)):
        wrapped = family in QWEN or family in ("gemma3", "internvl")
        opening, closing = ([VS], [VE]) if wrapped else ([], [])
        if family in QWEN3 and video:
            frames = int(visuals[number]["grid"][0])
            for frame in range(frames):
                ids += [TIMESTAMP + frame, VS, *[token] * (count // frames), VE]
                types += [0, 0] + [kind] * (count // frames) + [0]
            ids.append(20 + number)
            types.append(0)
            continue
        ids += [*opening, *[token] * count, *closing, 20 + number]
        types += [0] * len(opening) + [kind] * count + [0] * (len(closing) + 1)
    ids += list(range(10, 10 + suffix))
    types += [0] * suffix
    out = {"input_ids": torch.tensor(ids), "visuals": visuals, "family": family}
    if family in QWEN or family == "gemma3":
        out["mm_token_type_ids"] = torch.tensor(types)
    return out


def collate(samples: list[dict]) -> dict:
    """Model inputs for a batch of :func:`sample` prompts, left-padded to the longest.

    Visual tensors are concatenated in batch order (llava_next/onevision tiles padded to the
    largest tile count; onevision gets ``batch_num_images``). Gemma 3 gets ``token_type_ids``
    (1 on image tokens), as its processor returns them.
    """
    family = samples[0]["family"]
    longest = max(len(s["input_ids"]) for s in samples)
    ids = torch.full((len(samples), longest), PAD, dtype=torch.long)
    mask = torch.zeros((len(samples), longest), dtype=torch.long)
    for row, s in enumerate(samples):
        length = len(s["input_ids"])
        ids[row, longest - length :] = s["input_ids"]
        mask[row, longest - length :] = 1
    batch: dict[str, Tensor] = {"input_ids": ids, "attention_mask": mask}
    visuals = [v for s in samples for v in s["visuals"]]
    if family in QWEN or family == "gemma3":
        types = torch.zeros_like(ids)
        for row, s in enumerate(samples):
            types[row, longest - len(s["input_ids"]) :] = s["mm_token_type_ids"]
        batch["token_type_ids" if family == "gemma3" else "mm_token_type_ids"] = types
    if family == "gemma3":
        if visuals:
            batch["pixel_values"] = torch.cat([v["pixel_values"] for v in visuals])
        return batch
    if family in QWEN:
        for kind, video in (("image", False), ("video", True)):
            chosen = [v for v in visuals if v["video"] == video]
            if not chosen:
                continue
            key = "pixel_values_videos" if video else "pixel_values"
            batch[key] = torch.cat([v["pixels"] for v in chosen])
            batch[f"{kind}_grid_thw"] = torch.stack([v["grid"] for v in chosen])
            if video and family == "qwen2_5_vl":
                batch["second_per_grid_ts"] = torch.ones(len(chosen))
        return batch
    videos = [v["pixel_values_videos"] for v in visuals if "pixel_values_videos" in v]
    if videos:
        batch["pixel_values_videos"] = torch.cat(videos)
    images = [v for v in visuals if "pixel_values" in v]
    if images and family in ("llava", "internvl"):  # InternVL: every tile of every image
        batch["pixel_values"] = torch.cat([v["pixel_values"] for v in images])
    elif images:
        tiles = max(v["pixel_values"].shape[1] for v in images)
        padded = [
            torch.nn.functional.pad(v["pixel_values"], (0, 0, 0, 0, 0, 0, 0, tiles - n))
            for v in images
            for n in [v["pixel_values"].shape[1]]
        ]
        batch["pixel_values"] = torch.cat(padded)
        batch["image_sizes"] = torch.cat([v["image_sizes"] for v in images])
        if family == "llava_onevision":
            batch["batch_num_images"] = torch.tensor(
                [sum("pixel_values" in v for v in s["visuals"]) for s in samples]
            )
    return batch


def inputs(family: str, model, video: bool = False, batch: int = 1, **options) -> dict:
    """Model inputs for ``batch`` same-shaped prompts with different pixel values.

    Extra keyword arguments go to :func:`sample`.
    """
    return collate(
        [sample(family, model, video=video, seed=1 + row, **options) for row in range(batch)]
    )


def ragged_samples(family: str, model, video: bool = False) -> list[dict]:
    """Two prompts of different lengths and visual content, for left-padded batches.

    The rows differ in prompt length and in the number or size of their images (or videos), so
    a fractional budget keeps a different number of tokens per row: llava and Gemma 3 have two
    images in row 0 and one in row 1; llava_next and OneVision images differ in size (and
    count); Qwen rows differ in grids and image count; videos differ in prompt length (and Qwen
    frames); InternVL rows hold images of 3 tiles, and of 1 and 5 tiles.
    """
    if family == "internvl":
        return [
            sample(family, model, size=3, prefix=2, seed=1),
            sample(family, model, images=2, size=[1, 5], prefix=5, seed=2),
        ]
    if family in ("llava", "gemma3"):
        return [
            sample(family, model, images=2, prefix=2, seed=1),
            sample(family, model, images=1, prefix=6, seed=2),
        ]
    if family == "llava_next":
        return [
            sample(family, model, size=(56, 56), prefix=2, seed=1),
            sample(family, model, images=2, size=[(28, 56), (56, 28)], prefix=5, seed=2),
        ]
    if family == "llava_next_video" and not video:
        return [
            sample(family, model, size=(112, 112), prefix=2, seed=1),
            sample(family, model, images=2, size=[(56, 112), (112, 56)], prefix=5, seed=2),
        ]
    if family == "llava_onevision" and not video:
        return [
            sample(family, model, size=(56, 112), prefix=2, seed=1),
            sample(family, model, images=2, size=[(56, 56), (56, 112)], prefix=5, seed=2),
        ]
    if family in ("llava_onevision", "llava_next_video"):
        return [
            sample(family, model, video=True, prefix=2, seed=1),
            sample(family, model, video=True, prefix=6, suffix=3, seed=2),
        ]
    if video:
        return [
            sample(family, model, video=True, size=(4, 4), prefix=2, seed=1),
            sample(family, model, video=True, frames=4, size=(2, 4), prefix=5, seed=2),
        ]
    return [
        sample(family, model, size=(4, 6), prefix=2, seed=1),
        sample(family, model, images=2, size=[(4, 4), (2, 4)], prefix=5, seed=2),
    ]


def visual_mask(input_ids: Tensor) -> Tensor:
    """Where ``input_ids`` holds an image or video placeholder."""
    return (input_ids == IMG) | (input_ids == VID)


def tiny_demo_model():
    """An untrained demo LLaVA (``visprune.demo.model``) small enough for unit tests, eval mode."""
    from visprune.demo import model as demo_model
    from visprune.demo.tokenizer import build_tokenizer

    config = demo_model.build_config(
        build_tokenizer(),
        vision_hidden=16,
        text_hidden=32,
        text_layers=3,  # as the bundled model: room for the in-LLM methods (layer 2)
        text_heads=2,
        text_intermediate=64,
    )
    return demo_model.build_model(config, seed=0).eval()


if __name__ == "__main__":  # smoke run: python tests/tiny_vlms.py
    import time

    for family, video in CASES:
        start = time.perf_counter()
        model = tiny(family)
        data = inputs(family, model, video=video, batch=2)
        with torch.no_grad():
            out = model(**data, labels=data["input_ids"])
            generated = model.generate(**data, **GENERATE)
        print(
            f"{family:16s} video={video!s:5s} ids={tuple(data['input_ids'].shape)} "
            f"loss={out.loss.item():.3f} generated={tuple(generated.shape)} "
            f"{time.perf_counter() - start:.2f}s"
        )
