"""The v2 demo recipe's data (text corpus, captions), batches, freezing and relevance metric."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tiny_vlms import tiny_demo_model
from visprune.demo import evaluate, relevance, task
from visprune.demo.training import corpus, recipe, rows, stages
from visprune.demo.training import train as demo_train


def test_descriptions_name_every_object_in_reading_order():
    objects = [(12, "red", "circle"), (3, "blue", "square"), (40, "green", "cross")]
    assert corpus.describe(objects) == "blue square , red circle , green cross ."


def test_text_samples_put_the_scene_where_the_image_goes():
    question = corpus.text_sample(0, 0, objects=(3, 3))
    described = corpus.text_sample(0, 1, objects=(3, 3))
    source = task.make_sample(0, "text", 0, objects=(3, 3))
    scene = corpus.describe(source.objects)
    assert question.kind == "question"
    assert question.text == f"{source.question} {scene} {source.question} {source.answer}"
    assert described.kind == "describe"
    first, _, second = described.text.partition(f" {corpus.DESCRIBE} ")
    assert first.startswith(corpus.DESCRIBE) and second == first[len(corpus.DESCRIBE) + 1 :]


def test_every_corpus_word_is_in_the_tokenizer():
    encoder = evaluate.Encoder()
    for index in range(40):
        sample = corpus.text_sample(0, index)
        assert encoder.tokenizer.unk_token_id not in encoder.words(sample.text)
    assert encoder.tokenizer.unk_token_id not in encoder.words(corpus.DESCRIBE)


def test_caption_batch_puts_the_loss_on_the_caption_only():
    encoder = evaluate.Encoder()
    samples = task.make_split(0, "train", 3, objects=(2, 5))
    batch = rows.caption_batch(samples, encoder)
    prompt = rows.caption_prompt(encoder)
    assert prompt.count(encoder.image) == task.NUM_CELLS
    for row, sample in enumerate(samples):
        ids = batch["input_ids"][row].tolist()
        labels = batch["labels"][row]
        target = [*encoder.words(corpus.caption(sample)), encoder.eos]
        assert ids[: len(prompt)] == prompt
        assert labels[labels != -100].tolist() == target
        assert int(batch["attention_mask"][row].sum()) == len(prompt) + len(target)
    assert batch["pixel_values"].shape == (3, 3, task.IMAGE_SIZE, task.IMAGE_SIZE)


def test_text_batch_models_every_token():
    encoder = evaluate.Encoder()
    samples = [corpus.text_sample(0, i) for i in range(4)]
    batch = rows.text_batch(samples, encoder)
    for row, sample in enumerate(samples):
        expected = [*encoder.words(sample.text), encoder.eos]
        labels = batch["labels"][row]
        assert labels[labels != -100].tolist() == expected
    assert "pixel_values" not in batch


def test_caption_stage_trains_the_vision_side_only():
    """A caption step with the language model frozen moves the tower and projector, nothing
    of the language model (embeddings and head included)."""
    model = tiny_demo_model().train()
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    config = stages.StageConfig(steps=2, lr=1e-2, batch=4, warmup=1)
    encoder = evaluate.Encoder()
    samples = task.make_split(0, "caption", 4, objects=(2, 4))
    stages.run_stage(
        "captions",
        model,
        stages.vision_parameters(model),
        config,
        lambda step: rows.caption_batch(samples, encoder),
        log=lambda message: None,
    )
    language = {id(p) for p in stages.language_parameters(model)}
    for name, parameter in model.named_parameters():
        if id(parameter) in language:
            assert torch.equal(before[name], parameter.detach()), name
        if "multi_modal_projector" in name or "patch_embedding" in name:
            assert not torch.equal(before[name], parameter.detach()), name
    assert all(p.requires_grad for p in model.parameters())  # unfrozen again afterwards


def test_single_object_questions():
    samples = task.make_split(0, "test", 50)
    chosen = [s for s in samples if relevance.single_object(s)]
    assert {s.qtype for s in chosen} == set(relevance.SINGLE_OBJECT)
    assert all(s.answer == "yes" for s in chosen if s.qtype == "exists")
    assert not any(s.qtype == "count" for s in chosen)


class _WordFeatures(torch.nn.Module):
    """A stand-in model whose visual token at the answer's cell is the embedding of the
    question's words and every other token is noise: the answer ranks first."""

    def __init__(self, encoder, samples, width: int = 32) -> None:
        super().__init__()
        self.embedding = torch.nn.Embedding(len(encoder.tokenizer), width)
        self.encoder, self.samples = encoder, samples
        self.model = self

    def get_input_embeddings(self):
        return self.embedding

    def get_image_features(self, pixel_values):
        generator = torch.Generator().manual_seed(0)
        out = 0.1 * torch.randn(len(self.samples), task.NUM_CELLS, 32, generator=generator)
        for row, sample in enumerate(self.samples):
            words = torch.tensor(self.encoder.words(sample.question))
            out[row, sample.targets[0]] = self.embedding(words).mean(0).detach()
        return out


def test_answer_ranks_find_a_token_equal_to_the_question():
    encoder = evaluate.Encoder()
    samples = [s for s in task.make_split(0, "test", 30) if relevance.single_object(s)]
    ranks = relevance.answer_ranks(_WordFeatures(encoder, samples), samples, encoder)
    assert ranks.tolist() == [1] * len(samples)
    assert relevance.summary(np.array([1, 3, 8, 60])) == {"median": 5.5, "top7": 0.5}


@pytest.mark.parametrize("objects", [(1, 1), (8, 14)])
def test_answer_ranks_are_ranks(objects):
    encoder = evaluate.Encoder()
    model = tiny_demo_model()
    samples = task.make_split(0, "test", 20, objects=objects)
    ranks = relevance.answer_ranks(model, samples, encoder, batch=7)
    assert len(ranks) == sum(relevance.single_object(s) for s in samples)
    assert ranks.min() >= 1 and ranks.max() <= task.NUM_CELLS


def test_question_batches_mix_in_caption_rows_after_the_questions():
    encoder = evaluate.Encoder()
    questions = task.make_split(0, "train", 3)
    captioned = task.make_split(0, "caption", 2, objects=(1, 4))
    batch = rows.question_batch(questions, encoder, captioned)
    assert batch["input_ids"].shape[0] == 5
    for row, sample in enumerate(questions):
        labels = batch["labels"][row]
        assert labels[labels != -100].tolist() == [*encoder.words(sample.answer), encoder.eos]
    for row, sample in enumerate(captioned, start=len(questions)):
        labels = batch["labels"][row]
        expected = [*encoder.words(corpus.caption(sample)), encoder.eos]
        assert labels[labels != -100].tolist() == expected
    images = np.stack([s.image for s in [*questions, *captioned]])
    assert torch.equal(batch["pixel_values"], torch.from_numpy(task.normalize(images)))


def test_question_samples_draw_the_configured_object_counts():
    """The question stage can mix scenes of few objects in with the task's 8-14."""
    mixed = recipe.RecipeConfig(question_objects=(1, 14))
    samples = recipe.question_samples(mixed, step=3, types=("colour", "shape"), count=200)
    counts = [len(s.objects) for s in samples]
    assert min(counts) < task.MIN_OBJECTS <= max(counts) <= task.MAX_OBJECTS
    assert {s.qtype for s in samples} == {"colour", "shape"}
    default = recipe.RecipeConfig()
    counts = [len(s.objects) for s in recipe.question_samples(default, 3, ("colour",), 50)]
    assert task.MIN_OBJECTS <= min(counts) and max(counts) <= task.MAX_OBJECTS
    again = recipe.question_samples(mixed, step=3, types=("colour", "shape"), count=200)
    assert [s.objects for s in again] == [s.objects for s in samples]
    later = recipe.question_samples(mixed, step=4, types=("colour", "shape"), count=200)
    assert [s.objects for s in later] != [s.objects for s in samples]


def test_caption_samples_never_repeat_across_steps():
    cfg = recipe.RecipeConfig()
    first = recipe.caption_samples(cfg, 0, 8)
    second = recipe.caption_samples(cfg, 1, 8)
    assert len(first) == 8 and recipe.caption_samples(cfg, 3, 0) == []
    assert not {tuple(map(tuple, s.objects)) for s in first} & {
        tuple(map(tuple, s.objects)) for s in second
    }
    assert all(1 <= len(s.objects) <= 4 for s in [*first, *second])


def test_named_probe_loss_labels_the_named_objects_tokens():
    """The probe sees each row's image tokens with the label of its own cell: a probe that
    reads a one-hot "named" feature planted in those tokens drives the loss to zero."""
    encoder = evaluate.Encoder()
    samples = [s for s in task.make_split(0, "train", 12) if s.qtype in ("colour", "shape")]
    ids = rows.question_batch(samples, encoder)["input_ids"]
    hidden = torch.zeros(*ids.shape, 2)
    named = demo_train.named_targets(samples).reshape(len(samples), task.NUM_CELLS)
    for row in range(len(samples)):
        image = (ids[row] == encoder.image).nonzero()[:, 0]
        hidden[row, image, named[row]] = 1.0
    probe = torch.nn.Linear(2, 2, bias=False)
    with torch.no_grad():
        probe.weight.copy_(50 * torch.eye(2))
    loss = demo_train.named_probe_loss(probe, hidden, ids, samples, encoder.image)
    assert loss.item() < 1e-6
    swapped = demo_train.named_probe_loss(probe, hidden.flip(-1), ids, samples, encoder.image)
    assert swapped.item() > 10
    short = ids.clone()
    short[0, (short[0] == encoder.image).nonzero()[0, 0]] = encoder.pad
    with pytest.raises(ValueError, match="image tokens"):
        demo_train.named_probe_loss(probe, hidden, short, samples, encoder.image)


def test_the_object_count_curriculum_grows_the_scenes_to_the_full_range():
    ramped = recipe.RecipeConfig(question_objects=(1, 14), question_objects_ramp=1000)
    assert recipe.question_objects_at(ramped, 0) == (1, 1)
    assert recipe.question_objects_at(ramped, 500) == (1, 7)
    assert recipe.question_objects_at(ramped, 1000) == (1, 14)
    assert recipe.question_objects_at(ramped, 5000) == (1, 14)
    maxima = [recipe.question_objects_at(ramped, step)[1] for step in range(0, 1001, 50)]
    assert maxima == sorted(maxima)
    first = recipe.question_samples(ramped, step=0, types=("colour",), count=20)
    assert all(len(s.objects) == 1 for s in first)
    plain = recipe.RecipeConfig(question_objects=(1, 14))
    assert recipe.question_objects_at(plain, 0) == (1, 14)


def test_the_best_checkpoint_is_saved_when_validation_matches_or_beats_the_best():
    saved, lines = [], []
    best = stages.BestCheckpoint(saved.append, "ckpt", lines.append)
    for step, score in enumerate([0.5, 0.4, 0.5, 0.7, 0.6]):
        best.offer({"all": score, "colour": score}, seed=3, params=10, step=step, began=0.0)
    assert [info["step"] for info in saved] == [0, 2, 3]
    assert list(saved[-1]) == ["seed", "params", "step", "minutes", "validation"]
    assert saved[-1]["validation"] == {"all": 0.7, "colour": 0.7}
    assert (saved[-1]["seed"], saved[-1]["params"]) == (3, 10)
    assert lines == ["  saved to ckpt"] * 3
