"""Loading a Hugging Face VLM for ``visprune bench`` and ``visprune generate``, and the inputs
of one image and prompt."""

from __future__ import annotations

from typing import Any


def load(model_id: str, device: str | None) -> tuple[Any, Any]:
    """Model (eval mode, on ``device``: cuda when available by default) and processor from a
    local directory (or a cached hub id)."""
    import torch
    from transformers import AutoModelForImageTextToText, AutoProcessor

    processor = AutoProcessor.from_pretrained(model_id)
    model = AutoModelForImageTextToText.from_pretrained(model_id, dtype="auto").eval()
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    return model.to(device), processor


def prompt_inputs(model: Any, processor: Any, image: Any, prompt: str) -> dict:
    """Processor inputs for one image and prompt: the chat template when the processor has one,
    else the prompt with the image placeholder in front."""
    if getattr(processor, "chat_template", None):
        messages = [
            {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": prompt}]}
        ]
        text = processor.apply_chat_template(messages, add_generation_prompt=True)
    else:
        placeholder = getattr(processor, "image_token", "<image>")
        text = prompt if placeholder in prompt else f"{placeholder}\n{prompt}"
    inputs = processor(images=[image], text=[text], return_tensors="pt")
    return {k: v.to(model.device) if hasattr(v, "to") else v for k, v in inputs.items()}


def open_image(path: str | None, default_size: int = 336) -> Any:
    """The RGB image at ``path``; a plain grey ``default_size`` square when ``path`` is None."""
    from PIL import Image

    if path is None:
        return Image.new("RGB", (default_size, default_size), (128, 128, 128))
    return Image.open(path).convert("RGB")
