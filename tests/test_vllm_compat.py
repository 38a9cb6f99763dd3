"""The plugin's check at engine start that the installed vLLM is laid out as the plugin expects
(``visprune.integrations.vllm.compat``), and the in-place M-RoPE offsets of the Qwen models.

Stand-in classes play vLLM here, so these run without vLLM; the one test that reads the
installed vLLM's real classes runs where vLLM is (``make test-vllm``).
"""

from __future__ import annotations

import importlib
import logging
import sys
import types
from types import SimpleNamespace

import pytest
import torch

from visprune.integrations.vllm import SERVED_ARCHITECTURES
from visprune.integrations.vllm.compat import (
    READ_VLLM,
    SEAMS,
    TESTED_VLLM,
    engine_errors,
    layout_errors,
    parameters_of,
    require_servable,
    vllm_definition,
)


def vllm_class(name: str, **methods) -> type:
    """A class that says it is vLLM's, with ``methods``."""
    return type(name, (), {"__module__": "vllm.model_executor.models.stand_in", **methods})


def visprune_subclass(base: type, **methods) -> type:
    return type(f"Pruned{base.__name__}", (base,), {"__module__": "visprune.stand_in", **methods})


def embed_input_ids(self, input_ids, multimodal_embeddings=None, *, is_multimodal=None): ...
def embed_multimodal(self, **kwargs): ...
def parse_images(self, **kwargs): ...
def process_pixels(self, inputs): ...
def apply(self, inputs, timing_ctx): ...
def mm_hashes(self, inputs): ...
def load_weights(self, weights): ...
def num_image_tokens(self, *, image_width, image_height): ...


def llava_parts(**changes):
    """Stand-ins for vLLM 0.32's LLaVA classes (``changes`` replaces model methods)."""
    model = vllm_class(
        "LlavaForConditionalGeneration",
        **{
            "embed_multimodal": embed_multimodal,
            "embed_input_ids": embed_input_ids,
            "_parse_and_validate_image_input": parse_images,
            "_process_image_pixels": process_pixels,
            "load_weights": load_weights,
            **changes,
        },
    )
    info = vllm_class("LlavaProcessingInfo", get_num_image_tokens=num_image_tokens)
    processor = vllm_class("LlavaMultiModalProcessor", apply=apply, _get_mm_hashes=mm_hashes)
    return {
        "model": visprune_subclass(model, embed_multimodal=lambda self: None),
        "info": visprune_subclass(info),
        "processor": visprune_subclass(processor, apply=lambda self: None),
    }


def serve_as_llava(monkeypatch, model: type) -> None:
    """Let the stand-in ``model`` be the class served as LLaVA for the test."""
    target = f"{model.__module__}:{model.__qualname__}"
    monkeypatch.setitem(SERVED_ARCHITECTURES, "LlavaForConditionalGeneration", target)


def test_parameters_are_written_by_name_and_kind():
    assert parameters_of(embed_input_ids) == "input_ids, multimodal_embeddings, *, is_multimodal"
    assert parameters_of(num_image_tokens) == "*, image_width, image_height"

    def star(self, a, *args, b, **kwargs): ...

    assert parameters_of(star) == "a, *args, b, **kwargs"


def test_the_check_reads_vllms_definition_past_the_visprune_override():
    parts = llava_parts()
    assert vllm_definition(parts["model"], "embed_multimodal") is embed_multimodal
    assert vllm_definition(parts["processor"], "apply") is apply
    assert vllm_definition(parts["model"], "no_such_method") is None


def test_the_known_layout_passes():
    assert layout_errors("LlavaForConditionalGeneration", llava_parts()) == []


def test_a_moved_or_renamed_seam_is_reported():
    def renamed(self, pixel_values): ...

    errors = layout_errors(
        "LlavaForConditionalGeneration",
        llava_parts(_process_image_pixels=renamed, _parse_and_validate_image_input=None),
    )
    assert errors == [
        "model _parse_and_validate_image_input is missing",
        "model _process_image_pixels takes (pixel_values), not (inputs)",
    ]


def test_an_unknown_layout_raises_at_engine_start_naming_the_vllm_version(monkeypatch):
    parts = llava_parts(_process_image_pixels=None)
    monkeypatch.setitem(sys.modules, "vllm", types.SimpleNamespace(__version__="9.9.9"))
    serve_as_llava(monkeypatch, parts["model"])
    with pytest.raises(
        ValueError, match=r"vLLM 9\.9\.9 lays out LlavaForConditionalGeneration"
    ) as e:
        require_servable(parts["model"], SimpleNamespace(), parts["info"], parts["processor"])
    message = str(e.value)
    assert "_process_image_pixels is missing" in message
    assert all(version in message for version in TESTED_VLLM + READ_VLLM)


def engine(cudagraph_mm_encoder=False, pipeline=1):
    return SimpleNamespace(
        compilation_config=SimpleNamespace(cudagraph_mm_encoder=cudagraph_mm_encoder),
        parallel_config=SimpleNamespace(pipeline_parallel_size=pipeline),
    )


def test_the_default_engine_settings_are_servable():
    for architecture in SERVED_ARCHITECTURES:
        assert engine_errors(architecture, engine()) == []


def test_encoder_cuda_graphs_are_refused_they_would_skip_the_selection(monkeypatch):
    (error,) = engine_errors("Gemma3ForConditionalGeneration", engine(cudagraph_mm_encoder=True))
    assert "cudagraph_mm_encoder" in error
    parts = llava_parts()
    monkeypatch.setitem(sys.modules, "vllm", types.SimpleNamespace(__version__="0.32.0"))
    serve_as_llava(monkeypatch, parts["model"])
    with pytest.raises(ValueError, match=r"refused at engine start \(vLLM 0\.32\.0\)"):
        require_servable(
            parts["model"], engine(cudagraph_mm_encoder=True), parts["info"], parts["processor"]
        )


def test_pipeline_parallel_is_refused_where_offsets_would_not_reach_later_stages():
    (error,) = engine_errors("Qwen3VLForConditionalGeneration", engine(pipeline=2))
    assert "pipeline_parallel_size=2" in error
    assert engine_errors("LlavaForConditionalGeneration", engine(pipeline=2)) == []


def test_an_engine_config_without_the_checked_settings_is_reported():
    errors = engine_errors("LlavaForConditionalGeneration", SimpleNamespace())
    assert errors == [
        "the engine config has no compilation_config.cudagraph_mm_encoder, which the plugin checks",
        "the engine config has no parallel_config.pipeline_parallel_size, which the plugin checks",
    ]


def test_the_installed_vllms_default_engine_settings_are_servable():
    pytest.importorskip("vllm")
    from vllm.config import CompilationConfig, ParallelConfig

    config = SimpleNamespace(
        compilation_config=CompilationConfig(), parallel_config=ParallelConfig()
    )
    for architecture in SERVED_ARCHITECTURES:
        assert engine_errors(architecture, config) == []


def test_every_served_architecture_has_its_seams():
    assert set(SEAMS) == set(SERVED_ARCHITECTURES)


@pytest.mark.parametrize("architecture", list(SERVED_ARCHITECTURES))
def test_the_installed_vllm_has_the_known_layout(architecture):
    """Where vLLM is installed (0.32 in the test environment): every family's classes pass."""
    pytest.importorskip("vllm")
    module, name = SERVED_ARCHITECTURES[architecture].split(":")
    family = importlib.import_module(module)
    model = getattr(family, name)
    info = next(
        v for k, v in vars(family).items() if k.endswith("ProcessingInfo") and "Pruned" in k
    )
    processor = next(
        v for k, v in vars(family).items() if k.endswith("MultiModalProcessor") and "Pruned" in k
    )
    parts = {"model": model, "info": info, "processor": processor}
    assert layout_errors(architecture, parts) == []


# ------------------------------------------------------------------ M-RoPE offsets in place
class _Runner:
    """The parent of the pruned Qwen model in these tests: records what reaches its forward."""

    def embed_input_ids(self, input_ids, multimodal_embeddings=None, *, is_multimodal=None):
        self.embedded = multimodal_embeddings
        return input_ids

    def forward(self, input_ids, positions, intermediate_tensors=None, inputs_embeds=None, **kw):
        self.forwarded = positions
        return positions


def pruned_qwen():
    pytest.importorskip("vllm")
    from visprune.integrations.vllm.mrope import encode_offsets
    from visprune.integrations.vllm.qwen import QwenPrunedModelMixin

    model = type("Model", (QwenPrunedModelMixin, _Runner), {})()
    model.visprune = object()
    model._pending_offsets = None
    offsets = torch.tensor([[0, 0, 1], [0, 1, 0]])
    rows = torch.cat([torch.ones(2, 4), encode_offsets(offsets, torch.float32)], dim=-1)
    return model, [rows]


def test_offsets_are_added_into_the_runners_positions_buffer():
    """CUDA graphs read the positions at the address they captured: the offsets must land in
    the runner's buffer itself, not in a copy."""
    model, embeddings = pruned_qwen()
    is_multimodal = torch.tensor([False, True, True, False])
    model.embed_input_ids(torch.arange(4), embeddings, is_multimodal=is_multimodal)
    assert model.embedded[0].shape == (2, 4)  # the offset columns are stripped
    buffer = torch.zeros(3, 6, dtype=torch.long)
    step = buffer[:, :4]
    model.forward(torch.arange(4), step)
    assert model.forwarded.data_ptr() == buffer.data_ptr()
    assert buffer[:, :4].T.tolist() == [[0, 0, 0], [0, 0, 1], [0, 1, 0], [0, 0, 0]]


def test_a_step_that_skipped_forward_is_reported(caplog):
    """A full CUDA graph replays without the model's forward; the next step says so."""
    model, embeddings = pruned_qwen()
    from visprune.integrations.vllm.qwen import _warn_skipped_forward

    _warn_skipped_forward.cache_clear()
    is_multimodal = torch.tensor([False, True, True, False])
    model.embed_input_ids(torch.arange(4), embeddings, is_multimodal=is_multimodal)
    with caplog.at_level(logging.WARNING):
        model.embed_input_ids(torch.arange(4), embeddings, is_multimodal=is_multimodal)
    assert "without calling the model's forward" in caplog.text
