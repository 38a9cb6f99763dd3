"""The demo task generator, tokenizer/processor and a tiny demo model."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
import torch

from tiny_vlms import tiny_demo_model
from visprune.demo import evaluate, task
from visprune.demo import model as demo_model
from visprune.demo.tokenizer import build_tokenizer
from visprune.demo.training import train as demo_train


def test_generator_is_deterministic_per_seed():
    a = task.make_split(3, "train", 20)
    b = task.make_split(3, "train", 20)
    c = task.make_split(4, "train", 20)
    for x, y in zip(a, b, strict=True):
        assert np.array_equal(x.image, y.image)
        assert (x.question, x.answer, x.objects) == (y.question, y.answer, y.objects)
    assert any(not np.array_equal(x.image, z.image) for x, z in zip(a, c, strict=True))


def test_splits_are_disjoint():
    digests = {}
    for split in task.SPLITS:
        digests[split] = {s.image.tobytes() for s in task.make_split(0, split, 100)}
    assert not digests["train"] & digests["validation"]
    assert not digests["train"] & digests["test"]
    assert not digests["validation"] & digests["test"]


def test_question_types_and_answers_are_balanced():
    samples = task.make_split(0, "train", 3000)
    types = Counter(s.qtype for s in samples)
    assert set(types) == set(task.QUESTION_TYPES)
    assert max(types.values()) - min(types.values()) <= 1
    for qtype, answers in task.ANSWERS_BY_TYPE.items():
        counts = Counter(s.answer for s in samples if s.qtype == qtype)
        assert set(counts) == set(answers)
        expected = types[qtype] / len(answers)
        assert all(abs(n - expected) < 0.3 * expected for n in counts.values()), counts


def _cell_of_pixels(sample: task.Sample) -> set[int]:
    """Cells that contain a clearly coloured pixel (saturation far above the grey background)."""
    img = sample.image.astype(int)
    sat = img.max(-1) - img.min(-1)
    ys, xs = np.nonzero(sat > 80)
    return {int(y // task.PATCH * task.GRID + x // task.PATCH) for y, x in zip(ys, xs, strict=True)}


def test_each_object_lies_inside_one_patch_cell():
    for sample in task.make_split(1, "test", 50):
        cells = [cell for cell, _, _ in sample.objects]
        assert len(set(cells)) == len(cells)
        assert task.MIN_OBJECTS <= len(cells) <= task.MAX_OBJECTS
        assert _cell_of_pixels(sample) == set(cells)
        assert set(sample.targets) <= set(cells)


def test_answers_follow_from_the_objects():
    for s in task.make_split(2, "validation", 200):
        pairs = [(c, sh) for _, c, sh in s.objects]
        words = s.question.split()
        if s.qtype == "colour":
            matches = [c for c, sh in pairs if sh == words[4]]
            assert matches == [s.answer]
        elif s.qtype == "shape":
            matches = [sh for c, sh in pairs if c == words[4]]
            assert matches == [s.answer]
        elif s.qtype == "exists":
            assert ((words[3], words[4]) in pairs) == (s.answer == "yes")
        elif s.qtype == "count":
            n = sum(c == words[2] for c, _ in pairs)
            assert task.COUNT_WORDS[n - 1] == s.answer
        else:
            assert pairs.count((words[3], words[4])) == 1
            cell = next(cell for cell, c, sh in s.objects if (c, sh) == (words[3], words[4]))
            assert s.targets == [cell]
            row, col = divmod(cell, task.GRID)
            half = task.GRID / 2
            expected = {
                "left": col < half and abs(col + 0.5 - half) >= abs(row + 0.5 - half) + 1,
                "right": col >= half and abs(col + 0.5 - half) >= abs(row + 0.5 - half) + 1,
                "top": row < half and abs(row + 0.5 - half) >= abs(col + 0.5 - half) + 1,
                "bottom": row >= half and abs(row + 0.5 - half) >= abs(col + 0.5 - half) + 1,
            }
            assert [p for p, holds in expected.items() if holds] == [s.answer]


def test_tokenizer_and_processor_round_trip(tmp_path):
    tok = build_tokenizer()
    processor = demo_model.build_processor(tok)
    sample = task.make_sample(0, "test", 7)
    enc = evaluate.Encoder(tok)
    out = processor(images=sample.pil(), text=sample.prompt, return_tensors="pt")
    assert out["input_ids"][0].tolist() == enc.prompt(sample)
    assert tok.decode(enc.words(sample.question)) == sample.question
    assert tok.convert_ids_to_tokens(enc.words(sample.answer)) == [sample.answer]
    expected = torch.from_numpy(task.normalize(sample.image[None]))
    torch.testing.assert_close(out["pixel_values"], expected, atol=1e-6, rtol=0)
    processor.save_pretrained(tmp_path)
    from transformers import AutoProcessor

    again = AutoProcessor.from_pretrained(tmp_path)
    assert again(images=sample.pil(), text=sample.prompt)["input_ids"][0] == enc.prompt(sample)


@pytest.fixture(scope="module")
def tiny_model():
    return tiny_demo_model()


def test_tiny_model_forward_save_load_and_prune(tiny_model, tmp_path):
    import visprune

    samples = task.make_split(0, "test", 5)
    enc = evaluate.Encoder()
    batch = demo_train.train_batch(samples, enc)
    assert torch.isfinite(tiny_model(**batch).loss)
    before = evaluate.predict(tiny_model, samples, enc)
    demo_model.save(tiny_model, tmp_path, extra={"note": "test"})
    loaded, processor = demo_model.load(tmp_path)
    assert evaluate.predict(loaded, samples, enc) == before
    # The greedy prediction of the evaluation protocol equals generate's first token.
    out = processor(images=samples[0].pil(), text=samples[0].prompt, return_tensors="pt")
    gen = loaded.generate(**out, max_new_tokens=1, do_sample=False)
    assert processor.tokenizer.convert_ids_to_tokens(gen[0, -1:].tolist()) == [before[0]]
    for method in ("random", "divprune"):
        with visprune.apply(loaded, method, budget=0.111) as handle:
            preds = evaluate.predict(loaded, samples, enc)
            assert len(preds) == 5
            kept = handle.selections[-1]
        assert kept is not None


def test_answer_accuracy_reads_the_position_before_each_answer():
    labels = torch.tensor([[-100, -100, 5, 2], [-100, 7, 2, -100]])
    logits = torch.zeros(2, 4, 10)
    logits[0, 1, 5] = 1.0  # row 0 predicts its answer (5) at position 1
    logits[1, 0, 3] = 1.0  # row 1 predicts 3, the answer is 7
    assert demo_train.answer_accuracy(logits, labels) == 0.5


def test_curriculum_adds_one_type_per_stage_and_ends_with_all():
    assert demo_train.STAGES[0] == ("colour",)
    for before, after in zip(demo_train.STAGES, demo_train.STAGES[1:], strict=False):
        assert after[: len(before)] == before and len(after) == len(before) + 1
    assert set(demo_train.STAGES[-1]) == set(task.QUESTION_TYPES)


def test_prompt_asks_the_question_before_and_after_the_image():
    sample = task.make_sample(0, "test", 3)
    assert sample.prompt == f"{sample.question} <image> {sample.question}"
    ids = evaluate.Encoder().prompt(sample)
    q = len(evaluate.Encoder().words(sample.question))
    assert ids[:q] == ids[-q:] and len(ids) == 2 * q + task.NUM_CELLS


def test_chat_template_renders_the_training_prompt(tmp_path):
    """Chat-template callers (``visprune generate``, lmms-eval) send what the model learned."""
    from transformers import AutoProcessor

    demo_model.build_processor().save_pretrained(tmp_path)
    processor = AutoProcessor.from_pretrained(tmp_path)
    sample = task.make_sample(0, "test", 11)
    for content in (
        [{"type": "image"}, {"type": "text", "text": sample.question}],
        [{"type": "text", "text": sample.question}, {"type": "image"}],
    ):
        messages = [{"role": "user", "content": content}]
        text = processor.apply_chat_template(messages, add_generation_prompt=True)
        assert text == sample.prompt


def test_cell_targets_label_every_token():
    samples = task.make_split(0, "train", 3)
    targets = demo_train.cell_targets(samples)
    assert {k: v.shape for k, v in targets.items()} == dict.fromkeys(
        ("colour", "shape", "row", "column"), torch.Size([3 * task.NUM_CELLS])
    )
    for i, sample in enumerate(samples):
        colour = targets["colour"][i * task.NUM_CELLS : (i + 1) * task.NUM_CELLS]
        shape = targets["shape"][i * task.NUM_CELLS : (i + 1) * task.NUM_CELLS]
        drawn = {cell: (c, s) for cell, c, s in sample.objects}
        for cell in range(task.NUM_CELLS):
            if cell in drawn:
                assert task.COLOUR_NAMES[colour[cell]] == drawn[cell][0]
                assert task.SHAPE_NAMES[shape[cell]] == drawn[cell][1]
            else:
                assert colour[cell] == len(task.COLOUR_NAMES)
                assert shape[cell] == len(task.SHAPE_NAMES)
    cell = 2 * task.NUM_CELLS + 19  # third image, cell 19 = row 2, column 3
    assert (targets["row"][cell], targets["column"][cell]) == (19 // task.GRID, 19 % task.GRID)


def test_cell_probes_learn_the_labels_of_fixed_features():
    """The probe loss is a real per-token cross-entropy: fitting it drives it towards zero."""
    torch.manual_seed(0)
    samples = task.make_split(0, "train", 4)
    targets = demo_train.cell_targets(samples)
    # more dimensions than tokens: any labelling of these features is linearly separable
    features = torch.randn(4, task.NUM_CELLS, 4 * task.NUM_CELLS + 8)
    probes = demo_train.CellProbes(features.shape[-1])
    opt = torch.optim.Adam(probes.parameters(), lr=0.05)
    first = float(probes(features, targets))
    for _ in range(300):
        loss = probes(features, targets)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert first > 1.0 and float(loss) < 0.05


def test_named_targets_mark_the_objects_the_question_names():
    samples = task.make_split(5, "validation", 60)
    labels = demo_train.named_targets(samples).reshape(len(samples), task.NUM_CELLS)
    for s, row in zip(samples, labels, strict=True):
        words = s.question.split()
        at = {cell: (c, sh) for cell, c, sh in s.objects}
        first = [cell for cell in range(task.NUM_CELLS) if row[cell] == 1]
        second = [cell for cell in range(task.NUM_CELLS) if row[cell] == 2]
        if s.qtype == "colour":
            assert [at[c][1] for c in first] == [words[4]] and not second
        elif s.qtype == "shape":
            assert [at[c][0] for c in first] == [words[4]] and not second
        elif s.qtype == "exists":
            expected = [(words[3], words[4])] if s.answer == "yes" else []
            assert [at[c] for c in first] == expected and not second
        elif s.qtype == "count":
            assert len(first) == task.COUNT_WORDS.index(s.answer) + 1
            assert {at[c][0] for c in first} == {words[2]} and not second
        else:
            assert [at[c] for c in first] == [(words[3], words[4])] and not second
