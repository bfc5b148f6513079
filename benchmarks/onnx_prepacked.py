"""An ONNX model folder rewritten by ONNX Runtime with its prepacked weights saved in the external data file
(`session.save_external_prepacked_constant_initializers`), so that a later load maps them instead of packing again.

    python benchmarks/onnx_prepacked.py ONNX_FOLDER OUTPUT_FOLDER

The packed layout belongs to the CPU that wrote it (MLAS picks it by instruction set): a phone would write it on
first launch. Used by the harness to measure what it gives (load time, resident memory).
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import onnxruntime as ort

from fox_edge.formats import ONNX_DATA, ONNX_MODEL


def main(source: Path, output: Path) -> None:
    output.mkdir(parents=True)
    for file in source.iterdir():  # tokenizer, genai_config.json, config.json: everything but the graph and its data
        if file.name not in (ONNX_MODEL, ONNX_DATA) and file.is_file():
            shutil.copy2(file, output / file.name)
    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED  # no layout changes tied to this CPU
    options.optimized_model_filepath = str(output / ONNX_MODEL)
    options.add_session_config_entry("session.optimized_model_external_initializers_file_name", ONNX_DATA)
    options.add_session_config_entry("session.optimized_model_external_initializers_min_size_in_bytes", "1024")
    options.add_session_config_entry("session.save_external_prepacked_constant_initializers", "1")
    ort.InferenceSession(str(source / ONNX_MODEL), options, providers=["CPUExecutionProvider"])


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))
