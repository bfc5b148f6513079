"""Quantizers: GGUF (llama.cpp's quantizer) and ONNX weight-only int8/int4, calibrated on real text."""
