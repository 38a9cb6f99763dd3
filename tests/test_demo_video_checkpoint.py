"""The bundled demo video model: loads offline, answers the clip task, and pruning shows in it."""

from __future__ import annotations

import json

import pytest

import visprune
from visprune.demo import video_evaluate, video_model, video_task
from visprune.demo.video_run import bundled_checkpoint

#: A fixed subset of the test split, the same on every run.
SUBSET = 150


@pytest.fixture(scope="module")
def bundled():
    model, tokenizer = video_model.load(bundled_checkpoint())
    clips = video_task.make_split(0, "test", SUBSET)
    return model, video_evaluate.VideoEncoder(tokenizer), clips


def test_bundled_video_checkpoint_is_small_and_a_stock_llava_next_video():
    path = bundled_checkpoint()
    size = sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
    assert size <= 25 * 2**20, f"{size / 2**20:.1f} MiB"
    assert (path / "model.safetensors").is_file() and (path / "train_log.txt").is_file()
    from transformers import LlavaNextVideoForConditionalGeneration

    model = LlavaNextVideoForConditionalGeneration.from_pretrained(path)
    assert model.config.spatial_pool_stride == 1
    info = json.loads((path / "demo_info.json").read_text())
    assert info["validation"]["all"] >= 0.95


def test_bundled_video_model_scores_at_least_95_percent_unpruned(bundled):
    model, encoder, clips = bundled
    scores = video_evaluate.accuracy(model, clips, encoder)
    assert scores["all"] >= 0.95, video_evaluate.fmt(scores)
    assert min(scores[t] for t in video_task.QUESTION_TYPES) >= 0.9, video_evaluate.fmt(scores)


def test_random_pruning_at_11_percent_per_frame_loses_at_least_30_points(bundled):
    """The answer lives in one or two frames' tokens: random 2-of-16 per frame misses it."""
    model, encoder, clips = bundled
    full = video_evaluate.accuracy(model, clips, encoder)
    with visprune.apply(model, "random", budget=0.111):
        pruned = video_evaluate.accuracy(model, clips, encoder)
    for qtype in video_task.QUESTION_TYPES:
        assert full[qtype] - pruned[qtype] >= 0.3, (qtype, full, pruned)
