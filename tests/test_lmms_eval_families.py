"""lmms-eval wrappers of Qwen3-VL, Gemma 3 and InternVL: equal to visprune applied by hand.

Each family's tiny model is saved as a checkpoint (``tests/tiny_checkpoints.py``) and loaded by
lmms-eval's own class, as a Hub checkpoint would be. On the same requests (images of different
sizes, one batch), the wrapper's texts and token counts must equal those of the same checkpoint
loaded directly, with ``visprune.apply`` and a plain ``generate`` on the processor's batch.
"""

from __future__ import annotations

import importlib
from pathlib import Path

import numpy as np
import pytest
import torch

import tiny_checkpoints
import tiny_vlms
import visprune
from tiny_vlms import IMG

pytest.importorskip("lmms_eval", reason="install the eval extra: make install")

from lmms_eval.api.instance import Instance
from lmms_eval.models import get_model
from PIL import Image

from visprune.integrations import lmms_eval as wrappers


def _torchvision_imports() -> bool:
    try:
        importlib.import_module("torchvision")
    except Exception:
        return False
    return True


#: Qwen3-VL's and InternVL's processors hold a video processor, which needs torchvision.
needs_torchvision = pytest.mark.skipif(
    not _torchvision_imports(),
    reason="Qwen3-VL's and InternVL's processors need torchvision (see the Makefile's install)",
)

METHOD, BUDGET = "divprune", 0.5
#: Keep images small: lmms-eval's qwen3_vl resizes to at least 256 * 28 * 28 pixels by default.
QWEN_PIXELS = {"min_pixels": 4 * 28 * 28, "max_pixels": 16 * 28 * 28}
SETTINGS = {"max_new_tokens": 5, "temperature": 0, "until": []}
#: (H, W) of the requests' images: different token counts (Qwen grids, InternVL tiles) per row.
SIZES = [(56, 84), (40, 40), (64, 32)]

#: wrapper name, family, --force_simple, extra --model_args, checkpoint directory name
CASES = [
    pytest.param(
        "visprune_qwen3_vl",
        "qwen3_vl",
        False,
        QWEN_PIXELS,
        "tiny",
        id="qwen3_vl-chat",
        marks=needs_torchvision,
    ),
    pytest.param(
        "visprune_qwen3_vl",
        "qwen3_vl",
        True,
        QWEN_PIXELS,
        "tiny",
        id="qwen3_vl-simple",
        marks=needs_torchvision,
    ),
    pytest.param(
        "visprune_qwen3_vl",
        "qwen3_vl_moe",
        False,
        QWEN_PIXELS,
        "tiny-A3B",
        id="qwen3_vl_moe",
        marks=needs_torchvision,
    ),
    pytest.param("visprune_gemma3", "gemma3", True, {}, "tiny", id="gemma3-simple"),
    pytest.param(
        "visprune_internvl_hf",
        "internvl",
        False,
        {},
        "tiny",
        id="internvl_hf-chat",
        marks=needs_torchvision,
    ),
]
MODEL_CLASSES = {
    "qwen3_vl": "Qwen3VLForConditionalGeneration",
    "qwen3_vl_moe": "Qwen3VLMoeForConditionalGeneration",
    "gemma3": "Gemma3ForConditionalGeneration",
    "internvl": "InternVLForConditionalGeneration",
}


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """``(family, directory name) -> path`` of saved tiny checkpoints, built on first use."""
    saved: dict[tuple[str, str], Path] = {}

    def get(family: str, name: str) -> Path:
        if (family, name) not in saved:
            root = tmp_path_factory.mktemp(family)
            saved[family, name] = tiny_checkpoints.save(family, root / name)
        return saved[family, name]

    return get


def documents() -> list[dict]:
    rng = np.random.default_rng(0)
    docs = []
    for i, (height, width) in enumerate(SIZES):
        pixels = rng.integers(0, 255, (height, width, 3), dtype=np.uint8)
        question = " ".join(rng.choice(tiny_checkpoints.WORDS, size=2 + 2 * i))
        docs.append({"image": Image.fromarray(pixels), "question": question})
    return docs


def messages(doc: dict) -> list[dict]:
    content = [{"type": "image", "url": doc["image"]}, {"type": "text", "text": doc["question"]}]
    return [{"role": "user", "content": content}]


def requests(simple: bool) -> list[Instance]:
    """Generation requests as lmms-eval builds them for a simple or a chat task."""
    made = []
    for i, doc in enumerate(documents()):
        if simple:
            args = (doc["question"], dict(SETTINGS), lambda d: [d["image"]], i, "t", "test")
        else:
            args = (doc["question"], messages, dict(SETTINGS), i, "t", "test")
        metadata = {"task": "t", "doc_id": i, "repeats": 1}
        made.append(Instance("generate_until", args, idx=0, metadata=metadata))
    return made


def by_hand(path: Path, family: str, processor_args: dict) -> list[dict]:
    """Texts and token counts of the documents, one batch, with visprune applied by hand."""
    import transformers

    model_class = getattr(transformers, MODEL_CLASSES[family])
    model = model_class.from_pretrained(path, dtype=torch.bfloat16).eval()  # as lmms-eval loads
    processor = transformers.AutoProcessor.from_pretrained(path, **processor_args)
    processor.tokenizer.padding_side = "left"
    docs = documents()
    texts = [
        processor.apply_chat_template(messages(d), tokenize=False, add_generation_prompt=True)
        for d in docs
    ]
    images = [[d["image"]] for d in docs] if family == "gemma3" else [d["image"] for d in docs]
    inputs = processor(text=texts, images=images, return_tensors="pt", padding=True)
    inputs = inputs.to(dtype=torch.bfloat16)
    with visprune.apply(model, METHOD, budget=BUDGET) as handle, torch.no_grad():
        output = model.generate(
            **inputs, max_new_tokens=5, do_sample=False, pad_token_id=0, eos_token_id=1
        )
        selections = handle.selections
    new = output[:, inputs["input_ids"].shape[1] :]
    decoded = processor.tokenizer.batch_decode(new, skip_special_tokens=True)
    rows = []
    for row, text in enumerate(decoded):
        mine = [s for s in selections if s.sample == row]
        visual = int((inputs["input_ids"][row] == IMG).sum())
        assert sum(s.n for s in mine) == visual
        kept = sum(len(s.kept) for s in mine)
        tokens = new[row].tolist()
        length = next((i + 1 for i, t in enumerate(tokens) if t in (0, 1)), len(tokens))
        counts = {
            "input_tokens": int(inputs["attention_mask"][row].sum()) - visual + kept,
            "output_tokens": length,
            "visual_tokens": visual,
            "visual_tokens_kept": kept,
        }
        rows.append({"text": text, "counts": counts})
    return rows


@pytest.mark.parametrize("name,family,simple,extra,directory", CASES)
def test_wrapper_equals_visprune_applied_by_hand(
    checkpoints, name, family, simple, extra, directory
):
    path = checkpoints(family, directory)
    arguments = ",".join(f"{key}={value}" for key, value in extra.items())
    model = get_model(name, force_simple=simple).create_from_arg_string(
        f"pretrained={path},method={METHOD},budget={BUDGET}"
        + (f",{arguments}" if arguments else ""),
        {"batch_size": 3},
    )
    assert model.is_simple == simple and model.batch_size == 3
    assert type(model.model).__name__ == MODEL_CLASSES[family]  # lmms-eval's class loaded it
    assert model.model.dtype == torch.bfloat16
    model.task_dict = {"t": {"test": documents()}}
    results = model.generate_until(requests(simple))
    expected = by_hand(path, family, extra)
    for result, reference in zip(results, expected, strict=True):
        assert result.text == reference["text"]
        assert result.token_counts.to_dict() == reference["counts"]
    visual = [r["counts"]["visual_tokens"] for r in expected]
    kept = [r["counts"]["visual_tokens_kept"] for r in expected]
    assert all(0 < k < v for k, v in zip(kept, visual, strict=True)), (visual, kept)
    if family != "gemma3":  # Gemma 3 has a fixed number of tokens per image
        assert len(set(visual)) > 1, visual


def test_plugin_names_resolve_to_the_new_wrappers():
    """Both variants where lmms-eval has both; its only variant otherwise."""
    assert get_model("visprune_qwen3_vl") is wrappers.VispruneQwen3_VL
    assert get_model("visprune_qwen3_vl", force_simple=True) is wrappers.VispruneQwen3_VLSimple
    assert get_model("visprune_gemma3") is wrappers.VispruneGemma3Simple
    assert get_model("visprune_gemma3", force_simple=True) is wrappers.VispruneGemma3Simple
    assert get_model("visprune_internvl_hf") is wrappers.VispruneInternVLHf
    assert get_model("visprune_internvl_hf", force_simple=True) is wrappers.VispruneInternVLHf


@pytest.mark.parametrize(
    "family,directory,message",
    [
        ("qwen3_vl_moe", "tiny", "would load it as dense"),
        ("qwen3_vl", "tiny-A3B", "would load it as MoE"),
    ],
)
def test_qwen3_checkpoint_that_lmms_eval_would_misload_is_refused(
    tmp_path, family, directory, message
):
    """lmms-eval's qwen3_vl picks dense or MoE by the path's name; a wrong pick is refused
    before anything but the config is read (the directory holds nothing else)."""
    path = tmp_path / directory
    tiny_vlms.tiny(family).config.save_pretrained(path)
    with pytest.raises(ValueError, match=message):
        get_model("visprune_qwen3_vl").create_from_arg_string(
            f"pretrained={path},method={METHOD},budget={BUDGET}"
        )


def test_bad_method_is_refused_before_the_checkpoint_is_read(tmp_path):
    """The method is checked first: the (missing) checkpoint is never opened."""
    with pytest.raises(ValueError, match="needs method=NAME"):
        get_model("visprune_qwen3_vl").create_from_arg_string(f"pretrained={tmp_path / 'x'}")


def loglikelihood_requests() -> list[Instance]:
    """Scoring requests (simple tasks): each document's question, continuation " w7 w9"."""
    return [
        Instance(
            "loglikelihood",
            (d["question"], " w7 w9", lambda d: [d["image"]], i, "t", "test"),
            idx=0,
            metadata={"task": "t", "doc_id": i, "repeats": 1},
        )
        for i, d in enumerate(documents())
    ]


def test_gemma3_loglikelihood_under_keepall_is_the_plain_models_loss(checkpoints):
    """Gemma 3's class scores loglikelihood tasks: with keepall, batched by 2 (one list of
    images per prompt), each score is the plain model's mean loss of the continuation."""
    path = checkpoints("gemma3", "tiny")
    model = get_model("visprune_gemma3").create_from_arg_string(
        f"pretrained={path},method=keepall", {"batch_size": 2}
    )
    docs = documents()
    model.task_dict = {"t": {"test": docs}}
    results = model.loglikelihood(loglikelihood_requests())
    model.visprune_handle.remove()
    processor = model.hf_processor
    for doc, result in zip(docs, results, strict=True):
        prompt = processor.apply_chat_template(
            messages(doc), tokenize=False, add_generation_prompt=True
        )
        inputs = processor(text=[prompt + " w7 w9"], images=[[doc["image"]]], return_tensors="pt")
        with torch.no_grad():
            logits = model.model(**inputs.to(dtype=torch.bfloat16)).logits[0].float()
        target = inputs["input_ids"][0, -2:]
        loss = torch.nn.functional.cross_entropy(logits[-3:-1], target)
        assert result.text[0] == pytest.approx(float(loss), rel=2e-2)
        assert result.text[1] == bool((logits[-3:-1].argmax(-1) == target).all())
        assert result.token_counts.visual_tokens == result.token_counts.visual_tokens_kept == 16


@needs_torchvision
def test_qwen3_loglikelihood_batches_equal_single_requests(checkpoints):
    """Qwen3-VL's simple class scores pruned: batched by 3 equals one request at a time."""
    path = checkpoints("qwen3_vl", "tiny")
    arguments = "".join(f",{key}={value}" for key, value in QWEN_PIXELS.items())
    model = get_model("visprune_qwen3_vl", force_simple=True).create_from_arg_string(
        f"pretrained={path},method={METHOD},budget={BUDGET}{arguments}"
    )
    model.task_dict = {"t": {"test": documents()}}
    outputs = {}
    for size in (1, 3):
        model.batch_size_per_gpu = size
        outputs[size] = model.loglikelihood(loglikelihood_requests())
    for single, batched in zip(outputs[1], outputs[3], strict=True):
        assert batched.token_counts.to_dict() == single.token_counts.to_dict()
        assert batched.text[0] == pytest.approx(single.text[0], rel=2e-2)
        counts = single.token_counts
        assert 0 < counts.visual_tokens_kept < counts.visual_tokens
