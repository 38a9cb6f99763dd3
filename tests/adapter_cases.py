"""The cases of the ``visprune.apply`` tests on tiny in-process VLMs: families, videos, methods.

The tests hold generation to a hand-built pruned reference (:mod:`pruned_reference`) that never
goes through visprune; every test there runs without gradients (the autouse ``_no_grad``), and
``expected_items`` says which tokens, prompt and budget each method call should get.
"""

from __future__ import annotations

import pytest
import torch
from torch import Tensor

from pruned_reference import (
    visual_runs,
)
from tiny_vlms import (
    CASES,
    IMG,
    QWEN,
    VID,
)


def case_id(case: tuple[str, bool]) -> str:
    family, video = case
    return f"{family}-video" if video else family


CASE_PARAMS = [pytest.param(*case, id=case_id(case)) for case in CASES]


QWEN_CASES = [pytest.param(*case, id=case_id(case)) for case in CASES if case[0] in QWEN]


def method_params(names: list[str], random_seed: int) -> list:
    """``(method, params)`` cases, each with the method's name as its id; ``random`` draws from
    ``random_seed`` so that its picks are reproducible."""
    return [
        pytest.param(name, {"seed": random_seed} if name == "random" else {}, id=name)
        for name in names
    ]


@pytest.fixture(autouse=True)
def _no_grad():
    with torch.no_grad():
        yield


def expected_items(family: str, data: dict, fixed: Tensor) -> list[dict]:
    """Every image / video frame of ``data`` in batch and prompt order, with its candidates."""
    videos = iter(
        data["video_grid_thw"][:, 0].tolist()
        if "video_grid_thw" in data
        else [data["pixel_values_videos"].shape[1]] * len(data["pixel_values_videos"])
        if "pixel_values_videos" in data
        else []
    )
    items = []
    for sample_index, row in enumerate(data["input_ids"]):
        counter = {IMG: 0, VID: 0}
        runs = iter(visual_runs(row))
        for token, run in runs:
            kind = "video" if token == VID else "image"
            frames = next(videos) if kind == "video" else 1
            if kind == "video" and family in (
                "qwen3_vl",
                "qwen3_vl_moe",
            ):  # one run per frame, between timestamps
                run = torch.cat([run, *(next(runs)[1] for _ in range(frames - 1))])
            candidates = run[~fixed[sample_index, run]]
            per_frame = len(candidates) // frames
            for frame in range(frames):
                items.append(
                    {
                        "sample": sample_index,
                        "image": counter[token],
                        "frame": frame if kind == "video" else None,
                        "kind": kind,
                        "candidates": candidates[frame * per_frame : (frame + 1) * per_frame],
                    }
                )
            counter[token] += 1
    return items
