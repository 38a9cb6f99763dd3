"""The demo video task, model and ``visprune demo --video`` (on a freshly initialised model)."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
import torch

import visprune
from visprune.cli import main
from visprune.demo import task, video_evaluate, video_task
from visprune.demo import video_model as vmodel
from visprune.demo.training import video_train


def _cells_of(objects):
    return {cell: (colour, shape) for cell, colour, shape in objects}


@pytest.mark.parametrize("index", range(30))
def test_each_clip_holds_its_answer_where_its_targets_say(index):
    clip = video_task.make_clip(3, "train", index)
    frames = [_cells_of(objs) for objs in clip.objects]
    assert clip.frames.shape == (video_task.FRAMES, video_task.FRAME_SIZE, video_task.FRAME_SIZE, 3)
    if clip.qtype == "appeared":
        [(at, cell)] = clip.targets
        assert at > 0 and frames[at][cell][1] == clip.answer
        assert all(cell not in frames[f] for f in range(video_task.FRAMES) if f != at)
        # everything else stands still
        rest = [{c: o for c, o in fr.items() if c != cell} for fr in frames]
        assert all(r == rest[0] for r in rest)
    elif clip.qtype == "moved":
        (before, old), (after, new) = clip.targets
        assert after == before + 1 and old != new
        assert frames[before][old][0] == clip.answer == frames[after][new][0]
        assert old not in frames[after] and new not in frames[before]
        colours = [c for c, _ in frames[0].values()]
        assert len(colours) == len(set(colours))  # the colour names the mover
    else:
        [(last, cell)] = clip.targets
        assert last == video_task.FRAMES - 1
        shape = clip.question.split()[4]
        assert [s for _, s in frames[last].values()].count(shape) == 1
        assert frames[last][cell] == (clip.answer, shape)
        assert frames[last - 1][cell][0] != clip.answer  # only the last frame answers
    for f, objects in enumerate(frames):  # the pixels show the objects, cell by cell
        pixels = clip.frames[f].astype(float)
        grey = np.median(pixels.reshape(-1, 3), axis=0)
        for cell in range(video_task.CELLS):
            row, col = divmod(cell, video_task.GRID)
            p = task.PATCH
            patch = pixels[row * p : row * p + 7, col * p : col * p + 7]
            painted = (np.abs(patch - grey).max(-1) > 45).mean()  # background noise: ~9
            assert (painted > 0.2) == (cell in objects), (f, cell)


def test_clips_are_deterministic_balanced_and_split_apart():
    a = video_task.make_clip(0, "test", 7)
    b = video_task.make_clip(0, "test", 7)
    assert np.array_equal(a.frames, b.frames) and a.question == b.question
    assert not np.array_equal(a.frames, video_task.make_clip(0, "validation", 7).frames)
    clips = video_task.make_split(0, "train", 600)
    assert Counter(c.qtype for c in clips) == {t: 200 for t in video_task.QUESTION_TYPES}
    for qtype, answers in video_task.ANSWERS_BY_TYPE.items():
        seen = Counter(c.answer for c in clips if c.qtype == qtype)
        assert set(seen) == set(answers)
        assert min(seen.values()) > 200 / len(answers) / 2
    with pytest.raises(ValueError, match="unknown split"):
        video_task.make_clip(0, "caption", 0)
    with pytest.raises(ValueError, match="unknown question type"):
        video_task.make_clip(0, "train", 0, qtype="count")


def test_tokenizer_covers_every_question_and_answer():
    enc = video_evaluate.VideoEncoder()
    for clip in video_task.make_split(0, "validation", 60):
        ids = enc.prompt(clip)
        assert ids.count(enc.video) == video_task.NUM_TOKENS
        words = enc.tokenizer.convert_ids_to_tokens(enc.words(clip.question + " " + clip.answer))
        assert "<unk>" not in words


@pytest.fixture(scope="module")
def untrained(tmp_path_factory):
    path = tmp_path_factory.mktemp("video") / "model"
    model = vmodel.build_model(seed=1).eval()
    vmodel.save(model, path, {"seed": 1})
    return path


def test_saved_model_is_a_stock_llava_next_video_with_one_token_per_patch(untrained):
    from transformers import AutoTokenizer, LlavaNextVideoForConditionalGeneration

    model = LlavaNextVideoForConditionalGeneration.from_pretrained(untrained).eval()
    tokenizer = AutoTokenizer.from_pretrained(untrained)
    assert tokenizer.convert_tokens_to_ids("<video>") == model.config.video_token_id
    enc = video_evaluate.VideoEncoder(tokenizer)
    clips = video_task.make_split(0, "test", 2)
    batch = video_evaluate.prompt_batch(clips, enc)
    with torch.no_grad():
        features = model.model.get_video_features(batch["pixel_values_videos"])
    features = getattr(features, "pooler_output", features)
    flat = torch.cat(list(features)) if isinstance(features, (list, tuple)) else features
    assert flat.numel() // flat.shape[-1] == 2 * video_task.NUM_TOKENS
    with torch.no_grad():
        logits = model(**batch).logits
    assert logits.shape[:2] == batch["input_ids"].shape


def test_pruning_keeps_the_budget_in_every_frame(untrained):
    model, tokenizer = vmodel.load(untrained)
    enc = video_evaluate.VideoEncoder(tokenizer)
    clips = video_task.make_split(0, "test", 3)
    for method in ("divprune", "random", "fastv"):
        with visprune.apply(model, method, budget=0.25) as handle, torch.no_grad():
            model(**video_evaluate.prompt_batch(clips, enc), logits_to_keep=1)
            picks = handle.selections
        assert sorted((s.sample, s.frame) for s in picks) == [
            (c, f) for c in range(3) for f in range(video_task.FRAMES)
        ], method
        assert all(len(s.kept) == 4 and s.n == video_task.CELLS for s in picks), method


def test_training_steps_run_with_the_probes_and_save(tmp_path):
    cfg = video_train.VideoConfig(threads=1, eval_every=3, eval_size=6)
    cfg.questions.steps = 3
    cfg.questions.batch = 4
    lines: list[str] = []
    video_train.train(cfg, str(tmp_path / "ckpt"), lines.append)
    assert any("validation" in line for line in lines)
    model, _ = vmodel.load(tmp_path / "ckpt")
    assert model.config.model_type == "llava_next_video"
    assert not hasattr(model, "probes")  # training-only, not saved


def test_answer_targets_mark_the_event_tokens():
    clips = video_task.make_split(0, "train", 3)
    marks = video_train.answer_targets(clips).reshape(3, video_task.NUM_TOKENS)
    for clip, row in zip(clips, marks, strict=True):
        assert torch.nonzero(row).flatten().tolist() == sorted(clip.token_targets())


def test_demo_video_quick_writes_table_and_frames_picture(untrained, tmp_path, capsys):
    from PIL import Image

    out = tmp_path / "out"
    assert main(["demo", "--video", "--quick", "--samples", "6", "--model", str(untrained),
                 "--out", str(out)]) == 0  # fmt: skip
    printed = capsys.readouterr().out
    results = (out / "video_results.md").read_text()
    for method in ("unpruned", "divprune", "fastv", "rediprune"):
        assert f"| {method} |" in results and f"| {method} |" in printed
    types = " | ".join(f"accuracy/{t} (%)" for t in video_task.QUESTION_TYPES)
    assert f"| accuracy (%) | {types} |" in results
    kept = 2 * video_task.FRAMES  # 11 % of each frame's 16 tokens: 2 per frame
    assert f"| rediprune | 11.1% | compact | {kept} of {video_task.NUM_TOKENS} |" in results
    assert (out / "accuracy_vs_flops.png").is_file()
    picture = Image.open(out / "video_frames.png")  # 3 clips of (unpruned + methods) x frames
    scale = 3 * video_task.FRAME_SIZE
    assert picture.width > video_task.FRAMES * (scale + 8)
    from visprune.demo.video_run import video_methods

    runnable, skipped = video_methods()
    assert set(skipped) == {"visionzip", "vispruner"} and "Not run on video: " in results
    assert "visionzip (needs cls_attention" in results
    methods = len(runnable)
    assert picture.height > len(video_task.QUESTION_TYPES) * (scale + 8) * (1 + methods)


def test_demo_video_without_a_checkpoint_says_how_to_make_one(tmp_path, monkeypatch, capsys):
    from visprune.demo import video_run

    monkeypatch.setattr(video_run, "CHECKPOINT", tmp_path / "missing")
    assert main(["demo", "--video", "--quick", "--out", str(tmp_path / "o")]) == 1
    assert "--recipe video" in capsys.readouterr().err
