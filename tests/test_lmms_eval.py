"""The lmms-eval plugin: `python -m lmms_eval --model visprune_...` on the bundled demo task.

The demo model (the bundled checkpoint when present, else a tiny untrained one) is evaluated by
the real lmms-eval command line, offline, and must score exactly what ``visprune demo`` scores on
the same questions, question by question, with the kept-token counts in every logged sample.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import visprune
from tiny_vlms import tiny_demo_model
from visprune.demo import evaluate, task
from visprune.demo import model as demo_model
from visprune.demo import run as demo_run
from visprune.integrations import LMMS_EVAL_TASKS, lmms_eval_demo
from visprune.registry import UnknownNameError

pytest.importorskip("lmms_eval", reason="install the eval extra: make install")
from lmms_eval.models import get_model

from visprune.integrations import lmms_eval as wrappers
from visprune.integrations.lmms_eval import failures, prompts

#: Questions per command-line run: enough to tell methods apart, quick on a CPU.
SAMPLES = 40


METHOD, BUDGET = "rediprune", 0.111


KEPT = 7  # round(0.111 * 64)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    """The bundled demo checkpoint, or a tiny untrained one saved the same way."""
    if (demo_run.CHECKPOINT / "config.json").is_file():
        return demo_run.CHECKPOINT
    path = tmp_path_factory.mktemp("demo-checkpoint")
    demo_model.save(tiny_demo_model(), path)
    return path


def lmms_eval(args: list[str], out: Path) -> tuple[dict, dict[str, list[dict]]]:
    """Run ``python -m lmms_eval`` offline; its results and logged samples per task."""
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "HF_DATASETS_CACHE": str(out / "datasets"),
    }
    command = [sys.executable, "-m", "lmms_eval", *args, "--include_path", str(LMMS_EVAL_TASKS)]
    command += ["--log_samples", "--output_path", str(out)]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    results = json.loads(next(out.rglob("*_results.json")).read_text())
    samples = {}
    for path in out.rglob("*_samples_*.jsonl"):
        name = path.stem.split("_samples_", 1)[1]
        samples[name] = [json.loads(line) for line in path.read_text().splitlines()]
    assert "Traceback" not in done.stderr, done.stderr[-3000:]
    return results, samples


@pytest.fixture(scope="module")
def demo_answers(checkpoint) -> dict:
    """What ``visprune demo`` reports and predicts for the same questions and method."""
    rows = demo_run.evaluate(
        checkpoint, samples=SAMPLES, budgets=[BUDGET], methods=[METHOD], progress=False
    )
    model, processor = demo_model.load(checkpoint)
    encoder = evaluate.Encoder(processor.tokenizer)
    questions = task.make_split(0, "test", SAMPLES)
    with visprune.apply(model, METHOD, budget=BUDGET):
        predicted = evaluate.predict(model, questions, encoder)
    hits = [p == q.answer for p, q in zip(predicted, questions, strict=True)]
    accuracy = next(row["accuracy"] for row in rows if row["method"] == METHOD)
    assert accuracy == pytest.approx(sum(hits) / SAMPLES)
    return {"accuracy": accuracy, "hits": hits, "answers": [q.answer for q in questions]}


def check_samples(samples: list[dict], demo: dict, correct) -> None:
    """Every question logged once, scored as ``visprune demo`` scores it, 7 of 64 kept."""
    assert sorted(s["doc_id"] for s in samples) == list(range(SAMPLES))
    for sample in samples:
        i = sample["doc_id"]
        assert sample["target"].strip() == demo["answers"][i]
        assert bool(correct(sample)) == demo["hits"][i], sample
        (counts,) = sample["token_counts"]
        assert counts["visual_tokens"] == task.NUM_CELLS
        assert counts["visual_tokens_kept"] == KEPT
        assert counts["input_tokens"] < task.NUM_CELLS


def test_command_line_accuracy_equals_visprune_demo(checkpoint, demo_answers, tmp_path):
    """The documented command: chat model class, generation, batches of 4."""
    model_args = f"pretrained={checkpoint},method={METHOD},budget={BUDGET}"
    command = ["--model", "visprune_llava_hf", "--model_args", model_args]
    command += ["--tasks", "visprune_demo", "--batch_size", "4", "--limit", str(SAMPLES)]
    results, samples = lmms_eval(command, tmp_path)
    accuracy = results["results"]["visprune_demo"]["exact_match,none"]
    assert accuracy == pytest.approx(demo_answers["accuracy"])
    check_samples(samples["visprune_demo"], demo_answers, lambda s: s["exact_match"])
    throughput = results["throughput"]
    assert throughput["avg_visual_tokens_kept_per_sample"] == KEPT
    assert throughput["avg_visual_tokens_per_sample"] == task.NUM_CELLS
    assert throughput["total_elapsed_time"] > 0


def test_simple_class_scores_loglikelihood_and_generation_alike(checkpoint, demo_answers, tmp_path):
    """--force_simple: the loglikelihood task and the generation task, batches of 3."""
    model_args = f"pretrained={checkpoint},method={METHOD},budget={BUDGET}"
    tasks = "visprune_demo_loglikelihood,visprune_demo"
    command = ["--model", "visprune_llava_hf", "--force_simple", "--model_args", model_args]
    command += ["--tasks", tasks, "--batch_size", "3", "--limit", str(SAMPLES)]
    results, samples = lmms_eval(command, tmp_path)
    scores = results["results"]
    assert scores["visprune_demo_loglikelihood"]["acc,none"] == pytest.approx(
        demo_answers["accuracy"]
    )
    assert scores["visprune_demo"]["exact_match,none"] == pytest.approx(demo_answers["accuracy"])
    check_samples(samples["visprune_demo_loglikelihood"], demo_answers, lambda s: s["acc"])
    check_samples(samples["visprune_demo"], demo_answers, lambda s: s["exact_match"])


def test_plugin_names_resolve_to_the_wrappers():
    """The entry point registers every name; chat by default, simple on request."""
    assert get_model("visprune_llava_hf") is wrappers.VispruneLlavaHf
    assert get_model("visprune_llava_next") is wrappers.VispruneLlavaHf
    assert get_model("visprune_llava_onevision") is wrappers.VispruneLlavaHf
    assert get_model("visprune_llava_hf", force_simple=True) is wrappers.VispruneLlavaHfSimple
    assert get_model("visprune_qwen2_5_vl") is wrappers.VispruneQwen2_5_VL
    assert get_model("visprune_qwen2_5_vl", force_simple=True) is wrappers.VispruneQwen2_5_VLSimple


@pytest.mark.parametrize(
    "arguments,error,message",
    [
        ("method=otprun,budget=64", UnknownNameError, "Did you mean 'otprune'"),
        ("method=otprune,budget=64,gama=0.1", ValueError, "has no parameter(s) gama"),
        ("method=otprune,budget=0", ValueError, "must be positive"),
        ("budget=64", ValueError, "needs method=NAME"),
    ],
)
def test_bad_model_args_fail_with_visprune_messages(tmp_path, arguments, error, message):
    """Checked before any checkpoint is read: the path does not even exist."""
    cls = get_model("visprune_llava_hf")
    with pytest.raises(error, match=message.replace("(", r"\(").replace(")", r"\)")):
        cls.create_from_arg_string(f"pretrained={tmp_path / 'missing'},{arguments}")


@pytest.mark.parametrize(
    "arguments,message",
    [
        ("method=otprun,budget=8", "Did you mean 'otprune'"),
        ("method=otprune,budget=0", "must be positive"),
    ],
)
def test_bad_model_args_fail_the_command_line(checkpoint, tmp_path, arguments, message):
    """lmms-eval's command line exits 0 after a model's exception; the wrappers make it 2."""
    command = [sys.executable, "-m", "lmms_eval", "--model", "visprune_llava_hf"]
    command += ["--model_args", f"pretrained={checkpoint},{arguments}", "--tasks", "visprune_demo"]
    command += ["--limit", "2", "--include_path", str(LMMS_EVAL_TASKS)]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 2, done.stdout[-2000:] + done.stderr[-2000:]
    assert message in done.stderr and "Traceback" not in done.stderr, done.stderr[-2000:]


def test_a_failing_request_fails_the_command_line(monkeypatch, capsys):
    """Under lmms-eval's command line a failure mid-run ends it with status 1 and the
    traceback; called from Python the exception itself propagates."""

    @failures.stops_the_run_on_failure
    def failing(self, requests):
        raise RuntimeError("out of memory")

    with pytest.raises(RuntimeError, match="out of memory"):
        failing(None, [])
    monkeypatch.setattr(failures, "under_lmms_eval_command_line", lambda: True)
    with pytest.raises(SystemExit) as exit_info:
        failing(None, [])
    assert exit_info.value.code == 1
    err = capsys.readouterr().err
    assert "Traceback" in err and "visprune: RuntimeError: out of memory" in err


@pytest.fixture(scope="module")
def wrapper(checkpoint):
    """The chat wrapper on the demo checkpoint, as ``--model_args`` would build it."""
    return get_model("visprune_llava_hf").create_from_arg_string(
        f"pretrained={checkpoint},method=resprune,budget=16,alpha=0.25,positions=original",
        {"batch_size": 2},
    )


def test_method_parameters_and_adapter_options_reach_visprune(wrapper):
    handle = wrapper.visprune_handle
    assert handle.active and handle.positions == "original"
    assert handle.method.params()["alpha"] == 0.25 and handle.method.budget == 16
    assert wrapper.batch_size == 2
    assert wrapper.model.device.type == "cpu"


@pytest.mark.parametrize(
    ("arguments", "expected"),
    [
        ("method=cdpruner,budget=16", {"budget": 16}),
        ("method=vispruner,budget=16,important_ratio=0.25", {"important_ratio": 0.25}),
        ("method=visionzip,budget=0.25,contextual_ratio=0.25", {"contextual_ratio": 0.25}),
    ],
)
def test_pre_llm_baselines_and_their_parameters_reach_visprune(checkpoint, arguments, expected):
    """The demo model's CLIP tower supplies the CLS attention VisPruner and VisionZip need."""
    model = get_model("visprune_llava_hf").create_from_arg_string(
        f"pretrained={checkpoint},{arguments}"
    )
    handle = model.visprune_handle
    assert handle.active and handle.method.name == arguments.split(",")[0].split("=")[1]
    for key, value in expected.items():
        assert handle.method.params()[key] == value
    handle.remove()


@pytest.mark.parametrize("index", [0, 4])
def test_demo_task_asks_the_demo_prompt(wrapper, index):
    """What the wrapper sends for a demo document is the processor's encoding of
    ``Sample.prompt`` with the sample's image, token for token."""
    doc = {"seed": 0, "index": index}
    sample = task.make_sample(0, "test", index)
    chat = wrapper._render(lmms_eval_demo.doc_to_messages(doc), generation=True)
    simple = prompts.user_turn(lmms_eval_demo.doc_to_text(doc), [sample.pil()], doc).messages
    expected = wrapper.hf_processor(
        text=[sample.prompt], images=[sample.pil()], return_tensors="pt"
    )["input_ids"]
    for text in (chat, wrapper._render(simple, generation=True)):
        sent = wrapper._encode([text], lmms_eval_demo.doc_to_visual(doc), [])["input_ids"]
        assert sent.tolist() == expected.tolist()
    assert lmms_eval_demo.doc_to_target(doc) == sample.answer
    assert lmms_eval_demo.process_results(doc, [f"{sample.answer} x"]) == {"exact_match": 1.0}
    assert lmms_eval_demo.process_results(doc, [""]) == {"exact_match": 0.0}


def test_torchvision_is_absent_or_importable():
    """A torchvision build that does not match torch breaks transformers' image processors;
    the test install makes the registry's build import (see the Makefile), users remove it."""
    if importlib.util.find_spec("torchvision") is not None:
        import torchvision  # noqa: F401
    from transformers import CLIPImageProcessor

    assert CLIPImageProcessor(size={"shortest_edge": 8}).size["shortest_edge"] == 8


def test_image_processors_work_without_torchvision(checkpoint, tmp_path):
    """What the README tells CPU users to do, remove torchvision, leaves the LLaVA checkpoints'
    processors working (transformers' PIL backend): checked in a Python that sees this
    environment's packages except torchvision, whether or not it is installed here."""
    packages = tmp_path / "packages"
    packages.mkdir()
    for folder in map(Path, sys.path):
        if folder.name != "site-packages" or not folder.is_dir():
            continue
        for entry in folder.iterdir():
            hidden = entry.name.startswith("torchvision") or entry.suffix == ".pth"
            if not hidden and not (packages / entry.name).exists():
                (packages / entry.name).symlink_to(entry)
    code = (
        "import sys, importlib.util, numpy as np; from PIL import Image; "
        "from transformers import AutoProcessor; "
        "from transformers.utils import is_torchvision_available as available; "
        "assert importlib.util.find_spec('torchvision') is None and not available(); "
        "p = AutoProcessor.from_pretrained(sys.argv[1]); "
        "image = Image.fromarray(np.zeros((50, 70, 3), np.uint8)); "
        "out = p(text=['<image> w'], images=[image], return_tensors='pt'); "
        "print(type(p.image_processor).__name__, tuple(out['pixel_values'].shape))"
    )
    source = Path(visprune.__file__).parents[1]  # the visprune under test
    env = {**os.environ, "PYTHONPATH": f"{source}{os.pathsep}{packages}", "HF_HUB_OFFLINE": "1"}
    done = subprocess.run(
        [sys.executable, "-S", "-c", code, str(checkpoint)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    name, shape = done.stdout.strip().splitlines()[-1].split(" ", 1)
    assert name.endswith("Pil"), name
    assert shape == f"(1, 3, {task.IMAGE_SIZE}, {task.IMAGE_SIZE})"
