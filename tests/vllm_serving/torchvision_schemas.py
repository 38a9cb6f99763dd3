"""Start-up fix for the test environments only (loaded from a ``.pth`` file there, see the
Makefile): vLLM's, and the eval extra's, whose Qwen-VL and InternVL processors need torchvision.

The package registry offers only CUDA builds of torchvision next to the pinned CPU torch; their
``import torchvision`` fails with "operator torchvision::nms does not exist" because the C
library that would register the detection operators cannot load. vLLM's LLaVA code imports
torchvision (for image transforms, never for detection), so when that import fails the two
operator schemas torchvision registers without a guard are declared first, and it imports.
A torchvision that imports on its own is left alone.
"""

import sys


def _declare_missing_schemas() -> None:
    try:
        import torchvision  # noqa: F401
    except Exception:  # the failed import leaves half-initialised modules behind
        for name in [name for name in sys.modules if name.split(".")[0] == "torchvision"]:
            del sys.modules[name]
    else:
        return
    import torch

    global _LIBRARY  # the schemas live as long as the Library object does
    _LIBRARY = torch.library.Library("torchvision", "DEF")
    _LIBRARY.define("nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    _LIBRARY.define("qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")


_declare_missing_schemas()
