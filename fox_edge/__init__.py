"""fox-edge: Fox-1 (and Llama-architecture siblings) to GGUF and ONNX, quantized, checked and run on device."""

__version__ = "0.1.0"
