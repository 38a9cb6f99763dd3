"""The bundled demo processor pads on the left, so batches built as the README builds them
(chat template, ``processor(..., padding=True)``, ``generate``) answer each row as alone."""

from __future__ import annotations

import pytest
import torch
from PIL import Image

import visprune
from visprune.demo import task
from visprune.demo.run import bundled_checkpoint


@pytest.fixture(scope="module")
def bundled():
    from transformers import AutoProcessor, LlavaForConditionalGeneration

    path = bundled_checkpoint()
    model = LlavaForConditionalGeneration.from_pretrained(path).eval()
    return model, AutoProcessor.from_pretrained(path)


def _answers(model, processor, samples) -> list[str]:
    texts = [
        processor.apply_chat_template(
            [
                {
                    "role": "user",
                    "content": [{"type": "image"}, {"type": "text", "text": s.question}],
                }
            ],
            add_generation_prompt=True,
        )
        for s in samples
    ]
    images = [Image.fromarray(s.image) for s in samples]
    inputs = processor(images=images, text=texts, padding=True, return_tensors="pt")
    if len(samples) > 1:  # the rows differ in length, so some are padded
        assert not bool(inputs["attention_mask"].all())
    with torch.no_grad():
        output = model.generate(**inputs, max_new_tokens=2, do_sample=False)
    return processor.batch_decode(
        output[:, inputs["input_ids"].shape[1] :], skip_special_tokens=True
    )


def test_the_bundled_processor_pads_on_the_left(bundled):
    assert bundled[1].tokenizer.padding_side == "left"


@pytest.mark.parametrize("method", [None, "divprune"])
def test_a_batch_answers_like_its_rows_alone(bundled, method):
    model, processor = bundled
    samples = task.make_split(0, "test", 6)
    assert len({len(s.question.split()) for s in samples}) > 1
    handle = visprune.apply(model, method, budget=16) if method else None
    try:
        batched = _answers(model, processor, samples)
        alone = [_answers(model, processor, [s])[0] for s in samples]
    finally:
        if handle is not None:
            handle.remove()
    assert all(answer.strip() for answer in alone)
    assert batched == alone


def test_a_saved_demo_checkpoint_pads_on_the_left(tmp_path):
    from transformers import AutoProcessor

    from tiny_vlms import tiny_demo_model
    from visprune.demo import model as demo_model

    demo_model.save(tiny_demo_model(), tmp_path)
    assert AutoProcessor.from_pretrained(tmp_path).tokenizer.padding_side == "left"
