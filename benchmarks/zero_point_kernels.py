"""One MatMulNBits node on ONNX Runtime's CPU kernels: 4/8 bits, zero points none / uint8 / float, accuracy 4 / 1.

    .venv/bin/python benchmarks/zero_point_kernels.py [--n 65536] [--k 2048] [--threads 2]

Why fox-edge writes integer zero points (benchmarks/README.md, "Zero points"): float ones are valid input but
are not prepacked, and every call dequantizes the whole matrix. Random weights; one row of input (a decode step);
milliseconds per call, mean of 10 after 3 warm-ups.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

BLOCK = 32


def model(n: int, k: int, bits: int, zero_points: str, accuracy_level: int, rng: np.random.Generator) -> bytes:
    blocks = k // BLOCK
    initializers = [
        numpy_helper.from_array(rng.integers(0, 255, (n, blocks, BLOCK * bits // 8), dtype=np.uint8), "weight"),
        numpy_helper.from_array(rng.random(n * blocks, dtype=np.float32), "scales"),
    ]
    if zero_points == "uint8":  # packed as the weights are: two 4-bit points a byte
        initializers.append(numpy_helper.from_array(rng.integers(0, 255, (n, -(-blocks * bits // 8)), dtype=np.uint8), "zero_points"))
    elif zero_points == "float":
        initializers.append(numpy_helper.from_array(rng.random(n * blocks, dtype=np.float32), "zero_points"))
    node = helper.make_node(
        "MatMulNBits", ["x", *(t.name for t in initializers)], ["y"], domain="com.microsoft",
        K=k, N=n, bits=bits, block_size=BLOCK, accuracy_level=accuracy_level,
    )  # fmt: skip
    graph = helper.make_graph(
        [node], "matmul", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, k])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, n])], initializers,
    )  # fmt: skip
    opsets = [helper.make_opsetid("", 21), helper.make_opsetid("com.microsoft", 1)]
    return helper.make_model(graph, opset_imports=opsets).SerializeToString()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=65536)
    parser.add_argument("--k", type=int, default=2048)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    print("| bits | zero points | accuracy_level 4 | accuracy_level 1 |\n|---|---|---|---|")
    for bits, zero_points in ((4, "none"), (4, "uint8"), (4, "float"), (8, "none"), (8, "uint8")):
        cells = []
        for accuracy_level in (4, 1):
            options = ort.SessionOptions()
            options.intra_op_num_threads = args.threads
            session = ort.InferenceSession(
                model(args.n, args.k, bits, zero_points, accuracy_level, rng), options, providers=["CPUExecutionProvider"]
            )
            x = rng.random((1, args.k), dtype=np.float32)
            for _ in range(3):
                session.run(None, {"x": x})
            started = time.perf_counter()
            for _ in range(10):
                session.run(None, {"x": x})
            cells.append(f"{(time.perf_counter() - started) * 100:.2f} ms")
        print(f"| {bits} | {zero_points} | {' | '.join(cells)} |", flush=True)


if __name__ == "__main__":
    main()
