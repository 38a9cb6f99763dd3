"""The bundled demo checkpoint: loads offline, answers the demo task, and pruning shows in it."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import ClassVar

import pytest
import torch
from PIL import Image

import visprune
from visprune.cli import main
from visprune.demo import evaluate, relevance, task
from visprune.demo import model as demo_model
from visprune.demo.run import bundled_checkpoint
from visprune.methods import Context, Method

#: A fixed subset of the test split, the same on every run.
SUBSET = 200


@pytest.fixture(scope="module")
def bundled():
    model, processor = demo_model.load(bundled_checkpoint())
    return model, evaluate.Encoder(processor.tokenizer), task.make_split(0, "test", SUBSET)


def test_bundled_checkpoint_is_small_and_loads_with_from_pretrained():
    path = bundled_checkpoint()
    size = sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
    assert size <= 25 * 2**20, f"{size / 2**20:.1f} MiB"
    assert (path / "model.safetensors").is_file()
    from transformers import AutoProcessor, LlavaForConditionalGeneration

    model = LlavaForConditionalGeneration.from_pretrained(path)
    assert model.config.model_type == "llava"
    processor = AutoProcessor.from_pretrained(path)
    assert processor.tokenizer.convert_tokens_to_ids("<image>") == model.config.image_token_id
    info = json.loads((path / "demo_info.json").read_text())
    assert info["validation"]["all"] >= 0.95


def test_bundled_weights_are_in_the_hub_layout_and_load_unchanged():
    """vLLM reads Hub names only (``vision_tower.vision_model...``); transformers maps them."""
    from safetensors.torch import load_file

    stored = load_file(bundled_checkpoint() / "model.safetensors")
    tower = [name for name in stored if name.startswith("vision_tower.")]
    assert tower and all(name.startswith(demo_model.HUB_TOWER_PREFIX) for name in tower)
    model, _ = demo_model.load(bundled_checkpoint())
    loaded = model.model.vision_tower.state_dict()
    for name in tower:
        assert torch.equal(loaded[name[len(demo_model.HUB_TOWER_PREFIX) :]], stored[name]), name
    assert len(loaded) == len(tower)


def test_save_writes_the_hub_layout(tmp_path):
    from safetensors.torch import load_file

    from tiny_vlms import tiny_demo_model

    model = tiny_demo_model()
    demo_model.save(model, tmp_path / "saved")
    names = list(load_file(tmp_path / "saved" / "model.safetensors"))
    assert any(name.startswith(demo_model.HUB_TOWER_PREFIX) for name in names)
    assert not any(
        name.startswith(demo_model.TOWER_PREFIX)
        and not name.startswith(demo_model.HUB_TOWER_PREFIX)
        for name in names
    )
    again, _ = demo_model.load(tmp_path / "saved")
    for (name, mine), (_, theirs) in zip(
        model.state_dict().items(), again.state_dict().items(), strict=True
    ):
        assert torch.equal(mine, theirs), name


def test_bundled_model_scores_at_least_97_percent_unpruned(bundled):
    model, encoder, questions = bundled
    scores = evaluate.accuracy(model, questions, encoder)
    assert scores["all"] >= 0.97, evaluate.fmt(scores)


def test_random_pruning_at_11_percent_loses_at_least_15_points(bundled):
    """The task makes pruning matter: the answer lives in one or two of the 64 tokens."""
    model, encoder, questions = bundled
    full = evaluate.accuracy(model, questions, encoder)["all"]
    with visprune.apply(model, "random", budget=0.111):
        pruned = evaluate.accuracy(model, questions, encoder)["all"]
    assert full - pruned >= 0.15, (full, pruned)


def test_the_bundled_models_visual_tokens_sit_next_to_their_words(bundled):
    """The model was trained LLaVA's way (captions with the language model frozen): the token
    of the object a question names is the most similar to the question's words for most
    single-object questions, what text-conditioned methods rely on (random: top 7 for 11 %)."""
    model, encoder, questions = bundled
    stats = relevance.summary(relevance.answer_ranks(model, questions, encoder))
    assert stats["median"] <= 3 and stats["top7"] >= 0.5, stats


@dataclass
class KeepCells(Method):
    """Keeps the listed cells, in order, up to the budget (an oracle that knows the answer)."""

    cells: tuple[int, ...] = ()

    name: ClassVar[str] = "keep-cells"

    def _select(self, tokens: torch.Tensor, k: int, ctx: Context) -> torch.Tensor:
        return torch.tensor(sorted(self.cells[:k])).expand(tokens.shape[0], k)


def test_the_answer_lives_in_the_target_tokens(bundled):
    """Locality: keeping only the cells that hold the answer (plus empty cells up to 11 %), the
    model still answers colour and shape questions: each object lives in its own token."""
    model, encoder, questions = bundled
    picks = [q for q in questions if q.qtype in ("colour", "shape")][:40]
    hits = 0
    for q in picks:
        empty = sorted(set(range(task.NUM_CELLS)) - {cell for cell, _, _ in q.objects})
        with visprune.apply(model, KeepCells(cells=(*q.targets, *empty)), budget=0.111):
            hits += evaluate.predict(model, [q], encoder)[0] == q.answer
    assert hits / len(picks) >= 0.9


def test_generate_answers_a_question_on_the_bundled_model(bundled, tmp_path, capsys):
    """The CLI path (processor + chat template + generate) gives the evaluation's answers."""
    model, encoder, questions = bundled
    predictions = evaluate.predict(model, questions[:10], encoder)
    right = [q for q, p in zip(questions[:10], predictions, strict=True) if p == q.answer]
    assert right
    sample = right[0]
    image_path = tmp_path / "question.png"
    Image.fromarray(sample.image).save(image_path)
    argv = ["generate", "--model", str(bundled_checkpoint()), "--image", str(image_path)]
    assert main([*argv, "--prompt", sample.question]) == 0
    assert capsys.readouterr().out.split()[0] == sample.answer


def test_demo_quick_on_the_bundled_model(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--quick", "--out", str(out)]) == 0
    table = (out / "results.md").read_text()
    header = next(line for line in table.splitlines() if line.startswith("| method |"))
    unpruned = next(line for line in table.splitlines() if line.startswith("| unpruned |"))
    column = [cell.strip() for cell in header.split("|")].index("accuracy (%)")
    accuracy = float(unpruned.split("|")[column])
    assert accuracy >= 90.0, unpruned
    relevance_line = next(line for line in table.splitlines() if "text relevance" in line)
    assert "median rank" in relevance_line and "single-object questions" in relevance_line


def test_position_questions_read_the_kept_tokens_original_positions(bundled):
    """The model locates objects through the language model's position ids: with compact
    positions (kept tokens renumbered) position questions fail even when the object is kept;
    with the original positions they are answered."""
    model, encoder, questions = bundled
    picks = [q for q in questions if q.qtype == "position"]
    scores = {}
    for positions in ("compact", "original"):
        with visprune.apply(model, "divprune", budget=0.333, positions=positions):
            predictions = evaluate.predict(model, picks, encoder)
        scores[positions] = sum(p == q.answer for p, q in zip(predictions, picks, strict=True))
    assert scores["original"] >= scores["compact"] + 0.2 * len(picks), scores
