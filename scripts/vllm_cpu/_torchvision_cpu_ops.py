"""Lets PyPI's CUDA build of torchvision import beside CPU torch (installed by linkedout's
vLLM environment). Its compiled ops cannot load; its import registers fake kernels for
`torchvision::nms`/`qnms`, so those two schemas are declared first. Transforms, which Qwen-VL
processors use, are plain torch and work."""

import importlib.abc
import sys


class _Finder(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name != "torchvision":
            return None
        sys.meta_path.remove(self)
        import torch

        try:
            torch.ops.torchvision.nms  # noqa: B018  (a working build has it)
        except (AttributeError, RuntimeError):
            lib = torch.library.Library("torchvision", "DEF")
            lib.define("nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
            lib.define("qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
            _Finder.library = lib
        return None  # the normal finders import torchvision itself


sys.meta_path.insert(0, _Finder())
