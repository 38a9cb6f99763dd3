"""``visprune demo`` and ``visprune generate`` end to end on a tiny demo checkpoint."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import visprune
from conftest import refused, spy_positions
from tiny_vlms import tiny_demo_model
from visprune.cli import main
from visprune.demo import model as demo_model
from visprune.demo import task


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A tiny untrained demo model saved like the bundled one."""
    path = tmp_path_factory.mktemp("demo-checkpoint")
    demo_model.save(tiny_demo_model(), path)
    return path


def test_demo_quick_runs_every_method_and_writes_results(checkpoint, tmp_path, capsys):
    out = tmp_path / "results"
    assert main(["demo", "--quick", "--model", str(checkpoint), "--out", str(out)]) == 0
    table = (out / "results.md").read_text()
    assert f"Command: `visprune demo --quick --model {checkpoint}" in table
    assert "Machine: " in table
    for method in ["unpruned", *(m for m in visprune.list_methods() if m != "keepall")]:
        assert f"| {method} |" in table
    assert "| 7 of 64 |" in table  # 11.1 % of the 64 visual tokens
    assert "prefill time" not in table and "prefill FLOPs" in table
    with Image.open(out / "overlays.png") as picture:  # 2 questions x (unpruned + methods)
        assert picture.height > picture.width > 2 * 3 * task.IMAGE_SIZE
    for name in ("accuracy_vs_tokens.png", "accuracy_vs_flops.png"):  # the sweep's plots
        with Image.open(out / name) as picture:
            assert picture.format == "PNG"
    assert (out / "results.jsonl").is_file()
    assert "visual tokens" in capsys.readouterr().out


def test_demo_without_a_checkpoint_says_how_to_make_one(tmp_path, capsys):
    missing = tmp_path / "none"
    from visprune.demo import run as demo_run

    original = demo_run.CHECKPOINT
    demo_run.CHECKPOINT = missing
    try:
        assert main(["demo", "--quick", "--out", str(tmp_path / "o")]) == 1
    finally:
        demo_run.CHECKPOINT = original
    assert "train_demo_model.py" in capsys.readouterr().err


def test_generate_answers_and_saves_the_overlay(checkpoint, tmp_path, capsys):
    sample = task.make_sample(0, "test", 1)
    image_path, viz = tmp_path / "q.png", tmp_path / "kept.png"
    Image.fromarray(sample.image).save(image_path)
    code = main(
        [
            "generate",
            "--model",
            str(checkpoint),
            "--image",
            str(image_path),
            "--prompt",
            sample.question,
            "--method",
            "divprune",
            "--budget",
            "16",
            "--viz",
            str(viz),
            "--max-new-tokens",
            "2",
        ]
    )
    assert code == 0
    captured = capsys.readouterr()
    assert captured.out.strip()  # an answer was printed
    assert "kept 16 of 64 visual tokens" in captured.err
    with Image.open(viz) as picture:  # the 64 x 64 view enlarged 6 times, under its labels
        assert picture.width >= 6 * task.IMAGE_SIZE and picture.height > 6 * task.IMAGE_SIZE + 100


def _banner(width: int, height: int) -> Image.Image:
    """Red, with a blue square in the middle as wide as the shorter side: what a centre crop
    keeps."""
    image = Image.new("RGB", (width, height), (255, 0, 0))
    side = min(width, height)
    left, top = (width - side) // 2, (height - side) // 2
    image.paste((0, 0, 255), (left, top, left + side, top + side))
    return image


def test_model_view_is_the_centre_crop_the_model_saw(checkpoint):
    from transformers import AutoProcessor

    from visprune.viz import model_view

    processor = AutoProcessor.from_pretrained(checkpoint)
    view = model_view(processor, _banner(300, 50))
    assert view.size == (task.IMAGE_SIZE, task.IMAGE_SIZE)
    red, _green, blue = (channel.getextrema() for channel in view.split())
    assert red[1] < 40 and blue[0] > 200  # only the blue middle, no red sides


@pytest.mark.parametrize("size", [(300, 50), (50, 300)])
def test_generate_overlay_of_a_non_square_image_shows_what_the_model_saw(
    checkpoint, tmp_path, size
):
    image_path, viz = tmp_path / "banner.png", tmp_path / "kept.png"
    _banner(*size).save(image_path)
    argv = ["generate", "--model", str(checkpoint), "--image", str(image_path), "--prompt", "x"]
    argv += ["--method", "keepall", "--viz", str(viz), "--max-new-tokens", "1"]
    assert main(argv) == 0
    with Image.open(viz) as picture:
        pixels = np.asarray(picture.convert("RGB")).astype(int)
    blue = (pixels[..., 2] > 200) & (pixels[..., 0] < 40) & (pixels[..., 1] < 40)
    ys, xs = np.nonzero(blue)  # the view: the blue middle only, enlarged 6 times
    left, top = xs.min(), ys.min()
    assert (xs.max() + 1 - left, ys.max() + 1 - top) == (6 * task.IMAGE_SIZE,) * 2
    assert blue[top : top + 6 * task.IMAGE_SIZE, left : left + 6 * task.IMAGE_SIZE].all()


def test_generate_viz_marks_the_answer_against_the_expected_one(checkpoint, tmp_path, capsys):
    from visprune.viz.text import RIGHT, WRONG

    image_path, viz = tmp_path / "q.png", tmp_path / "kept.png"
    Image.fromarray(task.make_sample(0, "test", 1).image).save(image_path)
    argv = ["generate", "--model", str(checkpoint), "--image", str(image_path), "--prompt", "x"]
    argv += ["--method", "random", "--budget", "8", "--viz", str(viz), "--max-new-tokens", "1"]
    assert main([*argv, "--expected", "not-a-word-of-the-demo"]) == 0
    with Image.open(viz) as picture:
        pixels = np.asarray(picture.convert("RGB"))
    assert (pixels == WRONG).all(-1).sum() > 100  # the frame and the words "... - wrong"
    assert not (pixels == RIGHT).all(-1).any()


def test_generate_says_when_it_cannot_draw_the_picture(checkpoint, tmp_path, monkeypatch, capsys):
    import visprune.viz

    def no_grid(*args, **kwargs):
        raise ValueError("this selection has no single token grid (anyres tiles)")

    monkeypatch.setattr(visprune.viz, "kept_picture", no_grid)
    Image.new("RGB", (64, 64)).save(tmp_path / "q.png")
    argv = ["generate", "--model", str(checkpoint), "--image", str(tmp_path / "q.png")]
    argv += ["--prompt", "x", "--method", "random", "--budget", "8", "--viz", "kept.png"]
    monkeypatch.chdir(tmp_path)
    assert main([*argv, "--max-new-tokens", "1"]) == 1
    err = capsys.readouterr().err
    assert "no --viz picture: this selection has no single token grid" in err
    assert "Traceback" not in err and not (tmp_path / "kept.png").exists()


@pytest.mark.parametrize(
    "argv,message",
    [
        (["--budget", "4"], "need --method"),
        (["--compile"], "need --method"),
        (["--method", "random", "--budget", "4", "--compile"], "random's selection cannot run"),
        (["--method", "nope"], "unknown method"),
        (["--method", "divprune", "--budget", "0"], "must be positive"),
        (["--method", "random", "--budget", "4", "--expected", "cyan"], "add --viz"),
    ],
)
def test_generate_rejects_bad_arguments(checkpoint, tmp_path, capsys, argv, message):
    image_path = tmp_path / "q.png"
    Image.new("RGB", (64, 64)).save(image_path)
    base = ["generate", "--model", str(checkpoint), "--image", str(image_path), "--prompt", "x"]
    with pytest.raises(SystemExit) as exit_info:
        main(base + argv)
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def test_generate_compile_selects_as_eager(checkpoint, tmp_path, monkeypatch, capsys):
    """``--compile`` reaches ``visprune.apply``: the same answer and kept tokens as eager
    (torch's graph capture, with the captured graph run as is instead of Inductor's code)."""
    monkeypatch.setattr(visprune.compiled, "BACKEND", "eager")
    image_path = tmp_path / "q.png"
    _banner(64, 64).save(image_path)
    argv = ["generate", "--model", str(checkpoint), "--image", str(image_path), "--prompt", "x"]
    argv += ["--method", "divprune", "--budget", "4", "--max-new-tokens", "2"]
    assert main(argv) == 0
    eager = capsys.readouterr()
    assert main([*argv, "--compile"]) == 0
    compiled = capsys.readouterr()
    assert compiled.out == eager.out and "kept 4 of 64" in compiled.err


def test_demo_positions_option_reaches_the_adapter(checkpoint, tmp_path, monkeypatch):
    seen = spy_positions(monkeypatch, visprune)
    out = tmp_path / "results"
    argv = ["demo", "--quick", "--model", str(checkpoint), "--out", str(out)]
    assert main([*argv, "--positions", "original"]) == 0
    assert "original positions" in (out / "results.md").read_text()
    assert seen and set(seen) == {"original"}


@pytest.mark.parametrize(
    "change,message",
    [
        ({"--image": "text"}, "is not an image pillow can read"),
        ({"--viz": "missing/kept.png", "--method": "divprune"}, "does not exist"),
        ({"--viz": "kept.bogus", "--method": "divprune"}, "unknown picture extension"),
        ({"--device": "cuda"}, "no usable CUDA device"),
        ({"--device": "nonsense"}, "--device 'nonsense'"),
        ({"--prompt": "what is in <image> ?"}, "image placeholder '<image>'"),
    ],
)
def test_generate_refuses_before_loading(
    checkpoint, tmp_path, capsys, monkeypatch, change, message
):
    """Each bad argument: one line on stderr and exit code 2, before any model loads."""
    import torch

    if change.get("--device") == "cuda" and torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    monkeypatch.chdir(tmp_path)
    Image.new("RGB", (64, 64)).save("q.png")
    (tmp_path / "text").write_text("not a picture")
    options = {"--model": str(checkpoint), "--image": "q.png", "--prompt": "x", **change}
    argv = ["generate", *(item for pair in options.items() for item in pair)]
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_demo_refuses_a_missing_model_and_an_impossible_output_folder(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["demo", "--model", str(tmp_path / "nonexistent")])
    assert exit_info.value.code == 2
    assert "no such directory" in capsys.readouterr().err
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    with pytest.raises(SystemExit) as exit_info:
        main(["demo", "--quick", "--out", str(blocker / "results")])
    assert exit_info.value.code == 2
    assert "is not a folder" in capsys.readouterr().err


def test_demo_prints_the_table_before_writing(checkpoint, tmp_path, monkeypatch, capsys):
    from visprune.demo import run as demo_run

    def refuse(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(demo_run, "overlays", refuse)
    with pytest.raises(OSError, match="disk full"):
        main(["demo", "--quick", "--model", str(checkpoint), "--out", str(tmp_path / "o")])
    assert "| divprune |" in capsys.readouterr().out


VIDEO_CHECKPOINT = Path(visprune.__file__).parent / "demo" / "video_checkpoint"


def _refused(argv, capsys) -> str:
    return refused(main, argv, capsys)


def test_demo_refuses_a_checkpoint_of_the_other_kind(checkpoint, tmp_path, capsys):
    out = ["--out", str(tmp_path / "o")]
    err = _refused(["demo", "--quick", "--model", str(VIDEO_CHECKPOINT), *out], capsys)
    assert "llava_next_video" in err and "visprune demo --video --model" in err
    err = _refused(["demo", "--video", "--quick", "--model", str(checkpoint), *out], capsys)
    assert "holds a llava model" in err and "run `visprune demo --model" in err


def test_demo_refuses_a_checkpoint_without_weights(checkpoint, tmp_path, capsys):
    folder = tmp_path / "no-weights"
    folder.mkdir()
    for path in checkpoint.iterdir():
        if not path.name.endswith(".safetensors"):
            shutil.copy(path, folder / path.name)
    err = _refused(
        ["demo", "--quick", "--model", str(folder), "--out", str(tmp_path / "o")], capsys
    )
    assert "has no weights" in err


def test_generate_reports_an_unloadable_model_on_one_line(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    Image.new("RGB", (64, 64)).save("q.png")
    (tmp_path / "empty").mkdir()
    err = _refused(["generate", "--model", "empty", "--image", "q.png", "--prompt", "x"], capsys)
    assert "cannot load --model 'empty'" in err


def _generate(checkpoint, tmp_path, *options) -> list[str]:
    image_path = tmp_path / "q.png"
    Image.fromarray(task.make_sample(0, "test", 1).image).save(image_path)
    argv = ["generate", "--model", str(checkpoint), "--image", str(image_path), "--prompt", "x"]
    return [*argv, "--max-new-tokens", "1", *options]


def test_generate_positions_reach_apply(checkpoint, tmp_path, monkeypatch):
    from visprune import api

    seen = spy_positions(monkeypatch, api)
    argv = _generate(checkpoint, tmp_path, "--method", "divprune", "--budget", "8")
    assert main([*argv, "--positions", "original"]) == 0
    assert seen == ["original"]


def test_generate_counts_the_merged_tokens_of_visionzip(checkpoint, tmp_path, capsys):
    argv = _generate(checkpoint, tmp_path, "--method", "visionzip", "--budget", "16")
    assert main(argv) == 0
    line = capsys.readouterr().err
    found = re.search(r"kept (\d+) \+ (\d+) merged = (\d+) of 64 visual tokens", line)
    assert found, line
    kept, merged, total = map(int, found.groups())
    assert merged > 0 and kept + merged == total == 16


def test_bench_explains_the_alignment_row(checkpoint, capsys):
    argv = ["bench", "--model", str(checkpoint), "--method", "divprune", "--budget", "8"]
    assert main([*argv, "--new-tokens", "2", "--repeats", "1", "--warmup", "0"]) == 0
    out = capsys.readouterr().out
    assert "alignment: the kept visual tokens against all of them" in out
    assert "w2 = Bures-Wasserstein" in out and "coverage = " in out


def test_the_demo_header_says_which_methods_keep_their_original_positions():
    from visprune.demo.run import demo_methods, positions_note

    compact = positions_note("compact", demo_methods())
    assert compact.startswith("compact positions for the kept tokens; the in-LLM methods (")
    assert all(name in compact for name in ("fastv", "pdrop", "dart"))
    assert "divprune" not in compact
    assert positions_note("original", demo_methods()) == "original positions for the kept tokens"
