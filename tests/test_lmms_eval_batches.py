"""The lmms-eval wrappers on batches of a tiny LLaVA-NeXT: each request gets its single result.

Rows with images of different shapes (different token counts) batched together give what each
request gives alone, and ``keepall`` scores exactly the unpruned model.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("lmms_eval", reason="install the eval extra: make install")
from lmms_eval.models import get_model

# ------------------------------------------------------------------ batches on LLaVA-NeXT
NEXT_WORDS = [f"w{i}" for i in range(3, 100)]


NEXT_IMAGE = 100  # the image token id of tiny_vlms


@pytest.fixture(scope="module")
def next_checkpoint(tmp_path_factory) -> Path:
    """A tiny LLaVA-NeXT (tests/tiny_vlms.py) with a word-level tokenizer and a PIL processor."""
    from transformers import LlavaNextProcessor
    from transformers.models.llava_next.image_processing_pil_llava_next import (
        LlavaNextImageProcessorPil,
    )

    import tiny_vlms
    from tiny_checkpoints import word_tokenizer

    tokenizer = word_tokenizer({NEXT_IMAGE: "<image>"}, {"image_token": "<image>"})
    processor = LlavaNextProcessor(
        image_processor=LlavaNextImageProcessorPil(
            size={"shortest_edge": 28},
            crop_size={"height": 28, "width": 28},
            image_grid_pinpoints=[[28, 56], [56, 28], [56, 56]],
        ),
        tokenizer=tokenizer,
        patch_size=14,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,
        image_token="<image>",
    )
    model = tiny_vlms.tiny("llava_next")
    model.generation_config.suppress_tokens = [NEXT_IMAGE]  # a generated placeholder is no image
    path = tmp_path_factory.mktemp("llava-next")
    model.save_pretrained(path)
    processor.save_pretrained(path)
    return path


def next_requests(kind: str) -> tuple[dict, list]:
    """Five requests with images of three shapes (different token counts per row)."""
    from lmms_eval.api.instance import Instance
    from PIL import Image

    rng = np.random.default_rng(0)
    docs = []
    for i in range(5):
        width, height = [(56, 28), (28, 56), (40, 40)][i % 3]
        pixels = rng.integers(0, 255, (height, width, 3), dtype=np.uint8)
        question = " ".join(rng.choice(NEXT_WORDS, size=2 + i))
        docs.append({"image": Image.fromarray(pixels), "question": question, "answer": " w7 w9"})

    def doc_to_messages(doc):
        content = [
            {"type": "image", "url": doc["image"]},
            {"type": "text", "text": doc["question"]},
        ]
        return [{"role": "user", "content": content}]

    requests = []
    for i, doc in enumerate(docs):
        if kind == "generate_until":
            settings = {"max_new_tokens": 4, "temperature": 0, "until": []}
            args = (doc["question"], doc_to_messages, settings, i, "next", "test")
        else:
            args = (doc["question"], doc["answer"], lambda d: [d["image"]], i, "next", "test")
        metadata = {"task": "next", "doc_id": i, "repeats": 1}
        requests.append(Instance(request_type=kind, arguments=args, idx=0, metadata=metadata))
    return {"next": {"test": docs}}, requests


@pytest.mark.parametrize(
    ("method", "kind"),
    [
        # before the language model; inside it, after layer 1 of 2 (FastV: attention; DART: keys)
        # DART reads key norms after RoPE: the scored prompt must be numbered as when alone.
        *[
            (m, k)
            for m in (
                "method=divprune,budget=3",
                "method=fastv,budget=3,layer=1",
                "method=dart,budget=3,layer=1",
            )
            for k in ("generate_until", "loglikelihood")
        ],
    ],
)
def test_batches_give_each_request_its_single_result(next_checkpoint, kind, method):
    """LLaVA-NeXT rows of different lengths, pruned, batched by 3 == one at a time."""
    model = get_model("visprune_llava_next").create_from_arg_string(
        f"pretrained={next_checkpoint},{method}"
    )
    model.task_dict, requests = next_requests(kind)
    outputs = {}
    for size in (1, 3):
        model.batch_size_per_gpu = size
        outputs[size] = getattr(model, kind)(requests)
    for single, batched in zip(outputs[1], outputs[3], strict=True):
        assert batched.token_counts.to_dict() == single.token_counts.to_dict()
        if kind == "generate_until":
            assert batched.text == single.text
        else:
            assert batched.text[0] == pytest.approx(single.text[0], rel=1e-4, abs=1e-5)
            assert batched.text[1] == single.text[1]
    docs = model.task_dict["next"]["test"]
    for result, doc in zip(outputs[3], docs, strict=True):
        ids = model.hf_processor(text=["<image>"], images=[doc["image"]])["input_ids"][0]
        assert result.token_counts.visual_tokens == ids.count(NEXT_IMAGE)
        assert result.token_counts.visual_tokens_kept == 3


def test_loglikelihood_matches_the_unpruned_model_under_keepall(next_checkpoint):
    """With keepall the score is the plain model's mean loss of the continuation."""
    import torch

    model = get_model("visprune_llava_next").create_from_arg_string(
        f"pretrained={next_checkpoint},method=keepall"
    )
    model.task_dict, requests = next_requests("loglikelihood")
    model.batch_size_per_gpu = 2
    results = model.loglikelihood(requests)
    model.visprune_handle.remove()
    for request, result in zip(requests, results, strict=True):
        doc = model.task_dict["next"]["test"][request.doc_id]
        prompt = "<image>" + doc["question"]
        inputs = model.hf_processor(
            text=[prompt + doc["answer"]], images=[doc["image"]], return_tensors="pt"
        )
        with torch.no_grad():
            logits = model.model(**inputs).logits[0]
        answer = len(doc["answer"].split())
        target = inputs["input_ids"][0, -answer:]
        loss = torch.nn.functional.cross_entropy(logits[-answer - 1 : -1], target)
        assert result.text[0] == pytest.approx(float(loss), rel=1e-4)
        assert result.text[1] == bool((logits[-answer - 1 : -1].argmax(-1) == target).all())
        assert result.token_counts.visual_tokens == result.token_counts.visual_tokens_kept
