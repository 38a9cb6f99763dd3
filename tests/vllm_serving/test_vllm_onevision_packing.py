"""The projector input of a LLaVA-OneVision image packed through vLLM's own packing (as the plugin
hands it to "vision"-stage methods) equals ``visprune.apply``'s packing in transformers, also
where the unpadded tiles are interpolated down (``anyres_max_9``), which the served tiny
checkpoint's grids never reach. No engine: vLLM's packing runs on a stand-in model."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from torch import nn

#: CLIP-like tower of 84 px in 14 px patches (6 x 6 per tile); grids up to 4 x 4 tiles.
PINPOINTS = [[84, 84], [84, 168], [168, 84], [336, 336], [168, 336]]
CONFIG = SimpleNamespace(
    vision_config=SimpleNamespace(image_size=84, patch_size=14),
    image_grid_pinpoints=PINPOINTS,
)


class Packer(nn.Module):
    """What vLLM's OneVision packing reads of the model: its config and newline parameter."""

    def __init__(self, width: int) -> None:
        super().__init__()
        from vllm.model_executor.models.llava_onevision import (
            LlavaOnevisionForConditionalGeneration,
        )

        self.config = CONFIG
        self.image_newline = nn.Parameter(torch.randn(width))
        self.merge = LlavaOnevisionForConditionalGeneration._merge_image_patch_embeddings

    def _merge_image_patch_embeddings(self, *args, **kwargs):
        return self.merge(self, *args, **kwargs)


#: (height, width, crops sent, packed patches, newlines): 4 x 4 tiles of 6 x 6 patches are
#: interpolated to 18 x 18 (ratio sqrt(576 / 324) > 1.1), 4 x 2 tiles are not; a single crop is
#: the base tile and one newline.
CASES = [
    (336, 336, None, 360, 18),
    (300, 320, None, 342, 17),
    (168, 336, None, 324, 12),
    (84, 160, None, 108, 6),
    (84, 84, None, 72, 6),
    (84, 84, 1, 36, 1),
]


@pytest.mark.parametrize(("height", "width", "crops", "patches", "newlines"), CASES)
def test_packed_projector_input_equals_transformers(height, width, crops, patches, newlines):
    from transformers.models.llava_onevision.modeling_llava_onevision import (
        LlavaOnevisionModel,
        get_anyres_image_grid_shape,
    )

    from visprune.integrations.vllm.llava_onevision import packed_projector_input

    if crops is None:
        rows, columns = get_anyres_image_grid_shape((height, width), PINPOINTS, 84)
        crops = 1 + rows * columns
    features = torch.randn(crops, 36, 8, generator=torch.Generator().manual_seed(crops))
    size = torch.tensor([height, width])
    model = Packer(8)
    newline_before = model.image_newline.detach().clone()
    candidates, newline = packed_projector_input(model, size, features)
    (expected,), _ = LlavaOnevisionModel.pack_image_features(
        SimpleNamespace(config=CONFIG), [features], size[None], image_newline=None
    )
    torch.testing.assert_close(candidates, expected)
    assert (len(candidates), int(newline.sum())) == (patches, newlines)
    served = model._merge_image_patch_embeddings(
        size, features, image_newline=model.image_newline, strategy="spatial_unpad"
    )
    assert newline.shape == (len(served),)
    assert torch.equal(served[newline], newline_before.expand(newlines, -1))
    assert torch.equal(model.image_newline.detach(), newline_before)  # the parameter is back
