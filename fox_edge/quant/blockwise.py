"""Block-wise quantization as ONNX Runtime's MatMulNBits and GatherBlockQuantized store it: rows cut into blocks,
each with a scale and (asymmetric) an integer zero point, codes packed two to a byte at 4 bits. Optionally the scales
are searched against an importance matrix (the mean squared activation of each input column on calibration text)."""

from __future__ import annotations

import numpy as np


def quantize_blockwise(
    weight: np.ndarray,
    bits: int,
    block_size: int,
    symmetric: bool = True,
    importance: np.ndarray | None = None,
    integer_zero_points: bool = True,
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Rows of `weight` (N, K) -> (packed uint8 (N, blocks, block_size*bits/8), scales (N, blocks), zero points or None).

    Symmetric, as llama.cpp's Q4_0/Q8_0: the value of largest magnitude in each block maps to the lowest
    code and the zero point is MatMulNBits' implicit default (8 or 128), so none is stored. Asymmetric, as
    Q4_1: each block's min..max spans the codes, with an integer zero point per block (uint8, unpacked here).
    MatMulNBits also accepts float zero points, but ONNX Runtime's CPU kernels cannot prepack them and fall back
    to dequantizing every call: 100x slower, 0.5 tokens/s for full-size Fox-1 (benchmarks/README.md).
    `integer_zero_points=False` returns the float zero points (float32) for a caller that carries their fractions
    some other way (GraphBuilder's block offsets).

    `importance` (K,), the mean squared activation of each input column on calibration text (an importance
    matrix): each block's scale (and zero point) is then searched to minimise the importance-weighted squared
    error, sum_j importance_j (w_j - dequantized_j)^2, which is the expected error of the layer's output when
    inputs are uncorrelated. Without it, round to nearest from the block's extremes, as above.
    """
    n, k = weight.shape
    blocks = -(-k // block_size)
    if blocks * block_size != k:
        weight = np.pad(weight, ((0, 0), (0, blocks * block_size - k)))
    w = weight.reshape(n, blocks, block_size).astype(np.float32, copy=False)
    top = (1 << bits) - 1
    if importance is not None:
        block_importance = _block_importance(importance, blocks * block_size, block_size)
        scales, zero = _searched_scales(w, block_importance, bits, symmetric, integer_zero_points)
    elif symmetric:
        peak = np.take_along_axis(w, np.abs(w).argmax(-1)[..., None], -1)[..., 0]
        scales = peak / -(1 << (bits - 1))
        zero = np.full_like(scales, 1 << (bits - 1))
    else:
        low = w.min(-1)
        scales = (w.max(-1) - low) / top
        zero = _zero_point(low, scales, top, integer_zero_points)
    codes = _codes(w, scales, zero, top)
    if symmetric:
        return pack(codes, bits), scales.astype(np.float32), None
    return pack(codes, bits), scales.astype(np.float32), zero.astype(np.uint8 if integer_zero_points else np.float32)


def _codes(w: np.ndarray, scales: np.ndarray, zero: np.ndarray, top: int) -> np.ndarray:
    inverse = np.divide(1.0, scales, out=np.zeros_like(scales), where=scales != 0)
    return np.clip(np.rint(w * inverse[..., None] + zero[..., None]), 0, top).astype(np.uint8)


def _zero_point(offset: np.ndarray, scale: np.ndarray, top: int, integer: bool = True) -> np.ndarray:
    """The code at which `offset + scale * code` is zero (w = scale * (code - zero point)); integer: rounded, within 0..top."""
    zero = -offset * np.divide(1.0, scale, out=np.zeros_like(scale), where=scale != 0)
    return integer_zero_point(zero, top) if integer else zero


def integer_zero_point(zero: np.ndarray, top: int) -> np.ndarray:
    return np.clip(np.rint(zero), 0, top)


def with_offset_blocks(blocks: int, block_size: int) -> int:
    """A row's blocks plus those its block offsets take (one offset per block, block_size to a block)."""
    return blocks + -(-blocks // block_size)


def _block_importance(importance: np.ndarray, padded: int, block_size: int) -> np.ndarray:
    """(K,) -> (blocks, block_size), padding columns weighing nothing; a column never seen weighs a little."""
    values = np.asarray(importance, dtype=np.float32).reshape(-1)
    floor = max(float(values.mean()), 1e-12) * 1e-3
    values = np.maximum(values, floor)
    return np.pad(values, (0, padded - values.size)).reshape(-1, block_size)


# Candidate scales around the extremes' own, as llama.cpp's quantizers try them: the block's extreme maps to
# the last code plus these offsets (in codes), before the weighted least-squares refit.
SCALE_OFFSETS = tuple(0.1 * i for i in range(-9, 10))


def _searched_scales(
    w: np.ndarray, importance: np.ndarray, bits: int, symmetric: bool, integer_zero: bool = True
) -> tuple[np.ndarray, np.ndarray]:
    """Per block, the (scale, zero point) with the least importance-weighted squared error among candidates: each
    candidate rounds the block to codes, then the scale (and, asymmetric, the offset; `integer_zero`: rounded to an
    integer zero point and the scale refit to it) is refit to those codes by weighted least squares. The plain
    round-to-nearest choice is a candidate too, so the search never does worse.

    The codes and residuals are computed in place: this search is most of a calibrated conversion's time."""
    top = (1 << bits) - 1
    half = 1 << (bits - 1)
    iw = importance * w
    sw = np.broadcast_to(importance.sum(-1), w.shape[:2])  # sum(i), sum(i w) per block: the refits' constants
    sx = iw.sum(-1)
    best_error = np.full(w.shape[:2], np.inf, dtype=np.float64)
    best_scale = np.zeros(w.shape[:2], dtype=np.float32)
    best_zero = np.zeros(w.shape[:2], dtype=np.float32)

    def codes(scale: np.ndarray, zero: np.ndarray, centred: bool = True) -> np.ndarray:
        """The codes _codes packs as float32, computed in place; `centred`: minus the zero point."""
        inverse = np.divide(1.0, scale, out=np.zeros_like(scale), where=scale != 0)
        q = w * inverse[..., None]
        q += zero[..., None]
        np.rint(q, out=q)
        np.clip(q, 0, top, out=q)
        if centred:
            q -= zero[..., None]
        return q

    def sums(q: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """sum(i w q), sum(i q^2) per block, summed pairwise: einsum's running sums move the 8-bit refits."""
        return (iw * q).sum(-1), (importance * q * q).sum(-1)

    def consider(scale: np.ndarray, zero: np.ndarray, fit: bool = False) -> tuple[np.ndarray, np.ndarray] | None:
        """Keep (scale, zero) where its error is the least so far; `fit`: also return its codes' sums."""
        scale = np.where(np.isfinite(scale), scale, 0).astype(np.float32)
        q = codes(scale, zero)
        fitted = sums(q) if fit else None
        q *= -scale[..., None]
        q += w  # the residual, whose weighted square is summed directly: expanding it cancels at 8 bits
        error = np.einsum("bk,nbk,nbk->nb", importance, q, q)
        better = error < best_error
        best_error[better], best_scale[better], best_zero[better] = error[better], scale[better], zero[better]
        return fitted

    if symmetric:
        peak = np.take_along_axis(w, np.abs(w).argmax(-1)[..., None], -1)[..., 0]
        zero = np.full(w.shape[:2], half, dtype=np.float32)
        consider(peak / -half, zero)
        for offset in SCALE_OFFSETS:
            scale = peak / -(half + offset)
            # The scale that fits these codes best: sum(iw q) / sum(i q^2).
            numerator, denominator = sums(codes(scale, zero))
            consider(np.divide(numerator, denominator, out=scale.copy(), where=denominator > 0), zero)
        return best_scale, best_zero
    low, high = w.min(-1), w.max(-1)
    span = high - low
    plain = span / top
    consider(plain, _zero_point(low, plain, top, integer_zero))
    for offset in SCALE_OFFSETS:
        scale = span / (top + offset)
        start_zero = _zero_point(low, scale, top, integer=False)
        q = codes(scale, start_zero, centred=False)
        # w ~ a q + b by weighted least squares; then scale a and zero point -b / a.
        sxq, sqq = sums(q)
        sq = (importance * q).sum(-1)
        determinant = sw * sqq - sq * sq
        ok = determinant > 1e-20 * np.maximum(sw * sqq, 1e-30)
        a = np.divide(sw * sxq - sx * sq, determinant, out=scale.copy(), where=ok)
        b = np.divide(sqq * sx - sq * sxq, determinant, out=low.copy(), where=ok)
        a = np.where(a > 0, a, scale)
        zero = _zero_point(b, a, top, integer_zero)
        if not integer_zero:
            consider(a, zero)
            continue
        numerator, denominator = consider(a, zero, fit=True)
        # The scale that fits the codes best around that integer zero point: sum(iw q) / sum(i q^2), q = codes - zero.
        consider(np.divide(numerator, denominator, out=a.copy(), where=denominator > 0), zero)
    return best_scale, best_zero


def dequantize_blockwise(packed: np.ndarray, scales: np.ndarray, bits: int, k: int, zero_points: np.ndarray | None = None) -> np.ndarray:
    """The inverse of quantize_blockwise."""
    zero = (1 << (bits - 1)) if zero_points is None else zero_points[..., None].astype(np.float32)
    values = (unpack(packed, bits).astype(np.float32) - zero) * scales[..., None]
    return values.reshape(values.shape[0], -1)[:, :k]


def pack(codes: np.ndarray, bits: int) -> np.ndarray:
    if bits == 8:
        return codes
    if codes.shape[-1] % 2:
        codes = np.concatenate([codes, np.zeros_like(codes[..., :1])], -1)
    return (codes[..., 0::2] | (codes[..., 1::2] << 4)).astype(np.uint8)  # element 0 in the low nibble


def unpack(packed: np.ndarray, bits: int) -> np.ndarray:
    if bits == 8:
        return packed
    return np.stack([packed & 0x0F, packed >> 4], -1).reshape(*packed.shape[:-1], -1)
