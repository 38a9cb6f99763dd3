"""Stage 1 of the v2 recipe on scenes written cell by cell (visprune.demo.training.grid_text)."""

from __future__ import annotations

import pytest
import torch

from tiny_vlms import tiny_demo_model
from visprune.demo import evaluate, task
from visprune.demo import model as demo_model
from visprune.demo.training import corpus, grid_text, recipe, stages


def test_cell_words_name_each_objects_colour_and_shape_in_its_cell():
    encoder = evaluate.Encoder()
    samples = task.make_split(0, "text", 3, objects=(2, 6))
    words = grid_text.cell_words(samples, encoder.vocab, encoder.image)
    assert words.shape == (3, 2, task.NUM_CELLS)
    for row, sample in enumerate(samples):
        occupied = {cell for cell, _, _ in sample.objects}
        for cell, colour, shape in sample.objects:
            assert words[row, 0, cell] == encoder.vocab[colour]
            assert words[row, 1, cell] == encoder.vocab[shape]
        empty = [c for c in range(task.NUM_CELLS) if c not in occupied]
        assert (words[row, :, empty] == encoder.image).all()


def test_scene_embeds_put_the_two_words_mean_at_each_image_position():
    encoder = evaluate.Encoder()
    embedding = torch.nn.Embedding(len(encoder.vocab), 8)
    samples = task.make_split(0, "text", 2, objects=(3, 3))
    prompt = encoder.prompt(samples[0])
    ids = torch.tensor([prompt, prompt])  # row 1: the same words around the other scene
    words = grid_text.cell_words(samples, encoder.vocab, encoder.image)
    embeds = grid_text.scene_embeds(embedding, ids, words, encoder.image)
    first = prompt.index(encoder.image)
    cell, colour, shape = samples[0].objects[0]
    expected = (
        embedding.weight[encoder.vocab[colour]] + embedding.weight[encoder.vocab[shape]]
    ) / 2
    torch.testing.assert_close(embeds[0, first + cell], expected)
    empty = next(c for c in range(task.NUM_CELLS) if c not in {o[0] for o in samples[0].objects})
    torch.testing.assert_close(embeds[0, first + empty], embedding.weight[encoder.image])
    question = ids[0] != encoder.image
    torch.testing.assert_close(embeds[0, question], embedding(ids[0, question]))


def test_scene_embeds_refuse_a_row_without_a_whole_image():
    encoder = evaluate.Encoder()
    embedding = torch.nn.Embedding(len(encoder.vocab), 8)
    sample = task.make_sample(0, "text", 0, objects=(3, 3))
    ids = torch.tensor([encoder.prompt(sample)])
    ids[0, ids[0].tolist().index(encoder.image)] = encoder.pad
    words = grid_text.cell_words([sample], encoder.vocab, encoder.image)
    with pytest.raises(ValueError, match="exactly 64 image positions"):
        grid_text.scene_embeds(embedding, ids, words, encoder.image)


def test_grid_batch_puts_the_loss_on_answers_and_captions_and_trains_the_embeddings():
    encoder = evaluate.Encoder()
    model = tiny_demo_model().train()
    samples = task.make_split(0, "text", 4, objects=(1, 5))
    kinds = [grid_text.kind_of(i) for i in range(4)]
    assert kinds == ["question", "describe", "question", "describe"]
    batch = grid_text.grid_batch(model, samples, kinds, encoder)
    assert "input_ids" not in batch and "pixel_values" not in batch
    for row, (sample, kind) in enumerate(zip(samples, kinds, strict=True)):
        labels = batch["labels"][row]
        words = sample.answer if kind == "question" else corpus.caption(sample)
        assert labels[labels != -100].tolist() == [*encoder.words(words), encoder.eos]
    model(**batch).loss.backward()
    grad = model.get_input_embeddings().weight.grad
    colour, shape = samples[1].objects[0][1:]
    for word in (encoder.vocab[colour], encoder.vocab[shape], encoder.image):
        assert grad[word].abs().sum() > 0


def test_align_runs_the_text_stage_on_grid_scenes(tmp_path):
    """Stages 1-2 with the grid layout: stage 1 trains the language model only (the vision
    side is not used), reports grid-scene accuracies, and the aligned model is saved."""
    model = tiny_demo_model()
    encoder = evaluate.Encoder()
    vision = {n: p.detach().clone() for n, p in model.named_parameters() if "vision" in n}
    embeddings = model.get_input_embeddings().weight.detach().clone()
    cfg = recipe.RecipeConfig(eval_every=2, eval_size=10)
    cfg.text = stages.StageConfig(steps=2, lr=1e-2, batch=4, warmup=1)
    cfg.captions = stages.StageConfig(steps=0, lr=1e-2, batch=4, warmup=1)
    lines: list[str] = []
    val = task.make_split(0, "validation", 10)
    processor = demo_model.build_processor(encoder.tokenizer)
    recipe.align(model, cfg, encoder, val, str(tmp_path / "m"), processor, lines.append)
    assert any(line.startswith("  text step 2: questions") for line in lines), lines
    assert not torch.equal(model.get_input_embeddings().weight, embeddings)
    for name, parameter in model.named_parameters():
        if name in vision:
            assert torch.equal(parameter, vision[name]), name
    assert (tmp_path / "m-aligned" / "model.safetensors").is_file()


def test_an_unknown_scene_layout_is_refused():
    cfg = recipe.RecipeConfig(text_scenes="table")
    with pytest.raises(ValueError, match="choose 'grid' or 'words'"):
        recipe.align(tiny_demo_model(), cfg, evaluate.Encoder(), [], "/nonexistent", None, print)


def test_the_default_scene_counts_follow_the_layout():
    assert recipe.text_objects(recipe.RecipeConfig()) == (1, task.MAX_OBJECTS)
    assert recipe.text_objects(recipe.RecipeConfig(text_scenes="words")) == (1, 4)
    assert recipe.text_objects(recipe.RecipeConfig(text_objects=(2, 3))) == (2, 3)


def test_zero_question_steps_stop_after_stages_1_and_2(tmp_path):
    """``questions.steps == 0``: the aligned model is saved, no stage-3 model is written."""
    cfg = recipe.RecipeConfig(eval_size=10, threads=1, eval_every=1)
    cfg.text = stages.StageConfig(steps=1, lr=1e-3, batch=2, warmup=1)
    cfg.captions = stages.StageConfig(steps=1, lr=1e-3, batch=2, warmup=1)
    cfg.questions = stages.StageConfig(steps=0, lr=1e-3)
    sizes = {"text_hidden": 16, "text_intermediate": 32, "text_layers": 1, "vision_hidden": 16}
    lines: list[str] = []
    recipe.train(cfg, str(tmp_path / "m"), lines.append, sizes=sizes)
    assert (tmp_path / "m-aligned" / "model.safetensors").is_file()
    assert not (tmp_path / "m").exists()
    assert not any("questions step" in line for line in lines)
