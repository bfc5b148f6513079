"""fox-edge: Fox-1 (and Llama-architecture siblings) to GGUF and ONNX, quantized, checked and run on device.

    from fox_edge import GgufOptions, convert, open_runner
    result = convert("path/to/checkpoint", "model.Q4_K_M.gguf", GgufOptions(quant="Q4_K_M"))   # converted, quantized, checked

The names below are imported on first use, so `import fox_edge` stays light.
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

_EXPORTS = {
    "convert": "fox_edge.pipeline",
    "ConvertResult": "fox_edge.pipeline",
    "GgufOptions": "fox_edge.pipeline",
    "OnnxOptions": "fox_edge.converters.onnx",
    "CheckSettings": "fox_edge.check",
    "CheckReport": "fox_edge.check",
    "check_model": "fox_edge.check",
    "open_runner": "fox_edge.runner",
    "ChatSession": "fox_edge.chat",
    "SamplingParams": "fox_edge.sampling",
    "FoxEdgeError": "fox_edge.errors",
}
__all__ = [*_EXPORTS, "__version__"]


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'fox_edge' has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name]), name)
