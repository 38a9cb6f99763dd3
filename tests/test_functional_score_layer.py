"""The scoring-layer rule of the methods that read the CLS attention, and the description of a
config that has none (``visprune.functional.score_layer``, shared by ``visprune.apply``'s
refusal and the vLLM plugin's)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from visprune.functional.score_layer import score_layer_index, score_settings

#: feature layer of a 24-layer tower -> (index, reads the embeddings output), or None.
CASES = [
    (-2, (22, False)),
    (-1, (23, False)),
    (-24, (0, False)),
    (1, (0, False)),
    (24, (23, False)),
    (0, (0, True)),
    (-25, (0, True)),
    (25, None),
    (-26, None),
    ([-2, -1], None),
    (True, None),
]


@pytest.mark.parametrize(("feature_layer", "expected"), CASES)
def test_the_layer_whose_output_is_the_projector_input_scores(feature_layer, expected):
    assert score_layer_index(feature_layer, "default", 24) == expected


def test_only_the_default_strategy_has_a_cls_row():
    assert score_layer_index(-2, "full", 24) is None


def test_a_config_is_described_by_its_tower_layer_and_strategy():
    llava = SimpleNamespace(
        vision_config=SimpleNamespace(model_type="siglip_vision_model"),
        vision_feature_layer=[-2, -5],
        vision_feature_select_strategy="full",
    )
    assert score_settings(llava) == (
        "vision tower siglip_vision_model, vision_feature_layer [-2, -5], select strategy "
        "'full'; a single layer of a CLS-token tower with the 'default' strategy is needed"
    )
    qwen = SimpleNamespace(vision_config=SimpleNamespace(model_type="qwen2_5_vl"))
    assert score_settings(qwen) == "vision tower qwen2_5_vl"
