"""``benchmarks/serving.py``'s Qwen2.5-VL case, without starting a server.

The checkpoint it serves turns a 640 x 480 image into the 391 visual tokens its results state,
through the chat template vLLM applies; the default model keeps Qwen2.5-VL-7B's share of
vision-tower FLOPs (which bounds what pruning can save); bad options exit with a message. The
benchmark modules are loaded by path: ``benchmarks/serving.py`` shares its module name with this
directory's ``serving.py`` helpers.
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"
GRID = (1, 34, 46)  # 640 x 480 px, rounded to 644 x 476, in 14-px patches
VISUAL = 34 * 46 // 4


def _load(name: str):
    """The benchmark module ``name``; its own imports of benchmark modules (``_checkpoint``)
    resolve in ``benchmarks/`` while it loads."""
    spec = importlib.util.spec_from_file_location(f"benchmark_{name}", BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.path.insert(0, str(BENCHMARKS))
    try:
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(BENCHMARKS))
    return module


qwen = _load("_qwen_checkpoint")


def test_a_640_by_480_image_is_391_tokens_of_a_loadable_checkpoint(tmp_path):
    from PIL import Image
    from transformers import AutoModelForImageTextToText, AutoProcessor

    qwen.write_qwen_checkpoint(tmp_path, hidden=128, layers=1, vision_depth=1)
    pixels = np.random.default_rng(0).integers(0, 256, (480, 640, 3), dtype=np.uint8)
    image = Image.fromarray(pixels)
    assert qwen.image_grid(tmp_path, image) == GRID

    processor = AutoProcessor.from_pretrained(tmp_path)
    words = "w5 w31000 w17"
    messages = [
        {
            "role": "user",
            "content": [
                {"type": "image_url", "image_url": {"url": "unused"}},
                {"type": "text", "text": words},
            ],
        }
    ]
    text = processor.apply_chat_template(messages, tokenize=False)
    inputs = processor(text=text, images=image, return_tensors="pt")
    ids = inputs["input_ids"][0]
    assert int((ids == qwen.SPECIALS["<|image_pad|>"]).sum()) == VISUAL
    assert len(ids) == VISUAL + 2 + 3  # vision start / end and the three words
    assert qwen.SPECIALS["<|vision_start|>"] == int(ids[0])
    model = AutoModelForImageTextToText.from_pretrained(tmp_path).eval()
    with torch.no_grad():
        logits = model(**inputs).logits
    assert logits.shape == (1, len(ids), qwen.VOCAB)


def test_the_default_model_keeps_the_7b_share_of_vision_flops():
    config = qwen.qwen_config(
        qwen.text_config(1024, qwen.QWEN_LAYERS), qwen.vision_config(1024, qwen.QWEN_VISION_DEPTH)
    )
    share = qwen.vision_share(config, GRID, 41)
    reference = qwen.vision_share(qwen.qwen2_5_vl_7b_config(), GRID, 41)
    assert 0.25 < reference < 0.29
    assert abs(share - reference) < 0.02


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (["--hidden", "100"], "multiple of 128"),
        (
            ["--hidden", "128", "--layers", "1", "--vision-depth", "1", "--budget", "391"],
            "keeps every one of the 391 visual tokens",
        ),
    ],
)
def test_bad_options_exit_with_a_message(options, message):
    done = subprocess.run(
        [sys.executable, str(BENCHMARKS / "serving.py"), "--family", "qwen2_5_vl", *options],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2
    assert message in done.stderr
    assert "Traceback" not in done.stderr
