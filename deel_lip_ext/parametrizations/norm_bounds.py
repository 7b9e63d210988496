"""Provable upper bounds of spectral norms in `keras.ops`: Gram iteration (Delattre et al., ICML 2023).

Power iteration converges to ||A||_2 from below, so a layer that divides by its estimate may be above its target
constant after an optimizer step. The Gram iteration converges from ABOVE: with H = A^H A (eigenvalues
lambda_i = sigma_i^2) and H_{t+1} = (H_t / f_t)^2, f_t = ||H_t||_F,

    lambda_max^(2^T) <= ||H_T||_F * prod_{t<T} f_t^(2^(T-t)),

i.e. log lambda_max <= log ||H_T||_F / 2^T + sum_t log f_t / 2^t, over-estimating sigma_max by at most a factor
m^(1 / 2^(T+2)) (m: the smaller side; 1.6 % for m = 64 and T = 6). The normalization by f_t keeps every
entry <= 1 (no overflow).

A stride-1 convolution with circular padding on an N x N torus is block-diagonalized by the 2-D DFT: its
singular values are those of the c_in x c_out matrices K^(omega) (the kernel's DFT on the torus), so its norm is
the largest of their norms. With "same" zero padding on an n x n input, the operator is a compression
(inputs restricted to n x n, outputs cropped to n x n) of the circular convolution on the (n + k // 2) torus,
whose norm is therefore an upper bound: an output i reads the inputs i - k // 2 .. i + k // 2 at most, and on a
torus of size m >= n + k // 2 none of them wraps around onto an input position 0..n - 1 (it lands in the zero
padding m - k // 2 .. m - 1 >= n, or stays beyond n - 1 below m). Smaller than the (n + k - 1) torus of the
naive zero padding: 561 instead of 612 frequencies for a 3 x 3 kernel at 32 x 32, 153 instead of 180 at 16 x 16.
A real kernel has K^(-omega) = conj(K^(omega)) (same singular values): half the frequencies suffice.

Computed in float32, a bound can come out a few ulps below the exact norm; `FLOAT32_MARGIN` (applied by
`upper_bounded_estimate`) covers that rounding. Certificates never rely on these float32 values: layers certify
with float64 norms (`deel_lip_ext.spectrum`).

Layers use these bounds (without gradient) to make the value they divide by an upper bound of the norm, while
the gradient still flows through their power-iteration estimate (`upper_bounded_estimate`).
"""

from __future__ import annotations

import functools
import math
from typing import Any

import numpy as np
from keras import ops
from numpy.typing import ArrayLike

__all__ = [
    "GRAM_ITERATIONS",
    "FLOAT32_MARGIN",
    "gram_norm_bound",
    "max_gram_norm_bound",
    "dense_norm_bound",
    "conv_norm_bound",
    "upper_bounded_estimate",
]

GRAM_ITERATIONS = 6
"""Gram squarings of the layers' bounds: at most m^(1/256) above the norm (m the smaller side of each matrix)."""

COARSE_ITERATIONS = 3
"""Squarings of every frequency before `max_gram_norm_bound` refines only the largest bounds."""

REFINED_FRACTION = 0.25
"""Fraction of the matrices (frequencies; at least 16) that `max_gram_norm_bound` refines to `GRAM_ITERATIONS`.

Measured on random 3x3 kernels ("same", 64 channels at 32x32: 1 of 612 frequencies can reach the max after 3
squarings; 128 channels at 16x16: 25 of 180; 32 channels at 32x32: 7 of 612)."""

FLOAT32_MARGIN = 1e-4
"""Relative margin added to a float32 bound: its rounding error (measured ~2e-7 relative) stays far below it."""


def _hermitian_parts(real, antisymmetric_source):
    """(X, A - A^T): the parts of a Hermitian X + iY, the real part made exactly symmetric (it is in exact arithmetic;
    a matmul may round its two triangles differently) and the imaginary one built exactly antisymmetric."""
    return (real + ops.swapaxes(real, -1, -2)) / 2.0, antisymmetric_source - ops.swapaxes(antisymmetric_source, -1, -2)


def _hermitian_square(real, imag):
    """(X + iY)^2 for a Hermitian X + iY (X symmetric, Y antisymmetric): X^2 - Y^2 + i (XY - (XY)^T).

    YX = -(XY)^T for such X and Y, so the product takes three real matmuls instead of four.
    """
    return _hermitian_parts(ops.matmul(real, real) - ops.matmul(imag, imag), ops.matmul(real, imag))


def _gram_start(real, imag):
    """Gram iteration state (H_real, H_imag, log_lambda) of a batch of (complex) matrices: H = the smaller Gram."""
    real = ops.cast(real, "float32")
    imag = ops.zeros_like(real) if imag is None else ops.cast(imag, "float32")
    m, n = real.shape[-2], real.shape[-1]
    t_real, t_imag = ops.swapaxes(real, -1, -2), ops.swapaxes(imag, -1, -2)
    # The imaginary part is A - A^T (A = I R^T, resp. R^T I): three real matmuls instead of four.
    if m < n:  # H = M M^H (m x m)
        h_real, h_imag = _hermitian_parts(ops.matmul(real, t_real) + ops.matmul(imag, t_imag), ops.matmul(imag, t_real))
    else:  # H = M^H M (n x n)
        h_real, h_imag = _hermitian_parts(ops.matmul(t_real, real) + ops.matmul(t_imag, imag), ops.matmul(t_real, imag))
    return h_real, h_imag, ops.zeros(real.shape[:-2], "float32")


def _frobenius(h_real, h_imag):
    return ops.maximum(ops.sqrt(ops.sum(ops.square(h_real) + ops.square(h_imag), axis=(-2, -1))), 1e-30)


def _gram_steps(state, first, last):
    """Gram squarings number first..last-1 of `state` (the step number sets the weight of its log-norm)."""
    h_real, h_imag, log_lambda = state
    for step in range(first, last):
        norm = _frobenius(h_real, h_imag)
        log_lambda = log_lambda + ops.log(norm) / 2.0**step
        scale = ops.expand_dims(ops.expand_dims(norm, -1), -1)
        h_real, h_imag = _hermitian_square(h_real / scale, h_imag / scale)
    return h_real, h_imag, log_lambda


def _gram_bound(state, n_iter):
    """The norm bound of a state after `n_iter` squarings: exp(log lambda_max bound / 2)."""
    h_real, h_imag, log_lambda = state
    return ops.exp((log_lambda + ops.log(_frobenius(h_real, h_imag)) / 2.0**n_iter) / 2.0)


def gram_norm_bound(real: ArrayLike, imag: ArrayLike | None = None, n_iter: int = GRAM_ITERATIONS) -> Any:
    """Upper bounds of the spectral norms of a batch of (complex) matrices by Gram iteration (float32).

    Args:
        real: real parts, shape (..., m, n).
        imag: imaginary parts of the same shape, or None (real matrices).
        n_iter: number of Gram squarings (>= 0); the bound is at most min(m, n)^(1 / 2^(n_iter + 2)) above the norm.

    Returns:
        A tensor of shape (...): each entry >= the matching matrix's largest singular value (exact arithmetic).

    Examples:
        >>> gram_norm_bound(keras.ops.eye(3) * 2.0)  # ~2 (2 * 3^(1/256))
    """
    return _gram_bound(_gram_steps(_gram_start(real, imag), 0, int(n_iter)), int(n_iter))


def _take(state, indices):
    return tuple(ops.take(part, indices, axis=0) for part in state)


def max_gram_norm_bound(
    real: ArrayLike,
    imag: ArrayLike | None = None,
    n_iter: int = GRAM_ITERATIONS,
    coarse_iter: int = COARSE_ITERATIONS,
    refine_fraction: float = REFINED_FRACTION,
) -> Any:
    """max_i gram_norm_bound(M_i, n_iter), computed by refining only the few matrices that can reach the max.

    The Gram bound decreases with the number of squarings (||H^2||_F <= ||H||_F^2). So after `coarse_iter`
    squarings of every matrix, only the ones with the largest coarse bounds (a fraction `refine_fraction` of
    them, at least 16) go on to `n_iter`; if every other coarse bound is at most the largest refined bound, that
    refined bound IS the max of the full `n_iter` bounds (the same value at ~(coarse_iter + 1) / (n_iter + 1) of
    the cost). Otherwise (matrices of near-equal norms, e.g. an orthogonal convolution) every matrix is refined,
    as `gram_norm_bound` does.

    Args:
        real: real parts, shape (batch, m, n).
        imag: imaginary parts of the same shape, or None (real matrices).
        n_iter: Gram squarings of the bound (>= coarse_iter).
        coarse_iter: squarings of every matrix before choosing which ones to refine.
        refine_fraction: the fraction of the matrices to refine (at least 16 are).

    Returns:
        A scalar tensor >= the largest singular value of every matrix of the batch.

    Examples:
        >>> max_gram_norm_bound(keras.random.normal((100, 8, 8)))  # == max(gram_norm_bound(...))
    """
    n_iter, coarse_iter = int(n_iter), min(int(coarse_iter), int(n_iter))
    state = _gram_steps(_gram_start(real, imag), 0, coarse_iter)
    count = state[0].shape[0]
    refine = max(16, math.ceil(count * float(refine_fraction)))
    if count <= refine or coarse_iter == n_iter:
        return ops.max(_gram_bound(_gram_steps(state, coarse_iter, n_iter), n_iter))
    coarse = _gram_bound(state, coarse_iter)
    top, indices = ops.top_k(coarse, refine + 1)
    refined = ops.max(_gram_bound(_gram_steps(_take(state, indices[:refine]), coarse_iter, n_iter), n_iter))
    return ops.cond(
        top[refine] <= refined,
        lambda: refined,
        lambda: ops.max(_gram_bound(_gram_steps(state, coarse_iter, n_iter), n_iter)),
    )


def dense_norm_bound(kernel: ArrayLike, n_iter: int = GRAM_ITERATIONS) -> Any:
    """Upper bound of ||kernel||_2 (a scalar) by Gram iteration.

    Args:
        kernel: a matrix (n_in, n_out).
        n_iter: Gram squarings.

    Returns:
        A scalar tensor >= the largest singular value.

    Examples:
        >>> dense_norm_bound(keras.random.normal((16, 8)))
    """
    return gram_norm_bound(kernel, None, n_iter)


@functools.lru_cache(maxsize=64)
def _half_torus_dft(kernel_size: tuple[int, int], torus: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """(cos, -sin) of 2 pi (a p / height + b q / width), rows (p, q), columns the taps (a, b): the DFT on the torus.

    The rows are p = 0..height // 2 and q = 0..width - 1: K^(-omega) = conj K^(omega), so these cover every
    spectrum. Taps beyond the torus wrap around by themselves (e^(2 pi i a p / height) has period height), which
    is the kernel a circular convolution on a smaller torus really applies. As one matmul by these (frequencies,
    kh kw) tables, the spectra come out already laid out as (frequency, c_in, c_out) matrices: measured 1 ms
    where an FFT of the (c_in, c_out, torus) taps and its transposes took 18-20 ms (64 and 128 channels, 3 x 3).
    """
    (kh, kw), (height, width) = kernel_size, torus
    p = np.arange(height // 2 + 1).reshape(-1, 1, 1, 1)
    q = np.arange(width).reshape(1, -1, 1, 1)
    a, b = np.arange(kh).reshape(1, 1, -1, 1), np.arange(kw).reshape(1, 1, 1, -1)
    # The products modulo the period first: exact integers, so the phase is as accurate at any size.
    phase = (2 * np.pi * ((a * p % height) / height + (b * q % width) / width)).reshape(-1, kh * kw)
    return np.cos(phase).astype("float32"), (-np.sin(phase)).astype("float32")


def conv_norm_bound(kernel: ArrayLike, input_size: tuple[int, int], padding: str, n_iter: int = GRAM_ITERATIONS) -> Any:
    """Upper bound of the norm of a stride-1 convolution at an input size ("same" zero or circular padding).

    Args:
        kernel: conv kernel (kh, kw, c_in, c_out).
        input_size: (height, width) of the input.
        padding: "circular" (torus of the input size) or "same" (the (n + k // 2) torus bounds it).
        n_iter: Gram squarings per frequency.

    Returns:
        A scalar tensor >= the operator norm of the convolution at that size.

    Examples:
        >>> conv_norm_bound(keras.random.normal((3, 3, 4, 8)), (8, 8), "same")
    """
    kernel = ops.cast(kernel, "float32")
    kh, kw = kernel.shape[0], kernel.shape[1]
    height, width = (int(s) for s in input_size)
    if padding == "same":  # see the module docstring: the torus k // 2 larger than the input is enough
        height, width = height + kh // 2, width + kw // 2
    elif padding != "circular":
        raise ValueError(f"padding must be 'same' or 'circular', got {padding!r}.")
    channels_in, channels_out = kernel.shape[2], kernel.shape[3]
    taps = ops.reshape(kernel, (kh * kw, channels_in * channels_out))
    cosines, sines = _half_torus_dft((kh, kw), (height, width))
    real, imag = (ops.reshape(ops.matmul(table, taps), (-1, channels_in, channels_out)) for table in (cosines, sines))
    return max_gram_norm_bound(real, imag, n_iter)


def upper_bounded_estimate(estimate: ArrayLike, bound: ArrayLike) -> Any:
    """max(estimate, bound * (1 + FLOAT32_MARGIN)) in value, the gradient of `estimate` (a power-iteration sigma) only.

    Dividing by this value is dividing by an upper bound of the norm (so the layer keeps its constant at every
    step), while training follows the usual spectral-normalization gradient and pays no backward pass through
    the bound.

    Args:
        estimate: a differentiable estimate of a norm (e.g. from power iteration).
        bound: an upper bound of the same norm.

    Returns:
        A tensor equal to max(estimate, bound * (1 + FLOAT32_MARGIN)).

    Examples:
        >>> upper_bounded_estimate(keras.ops.convert_to_tensor(0.9), keras.ops.convert_to_tensor(1.0))  # 1.0001
    """
    bound = ops.cast(bound, estimate.dtype) * (1.0 + FLOAT32_MARGIN)
    return estimate + ops.stop_gradient(ops.maximum(bound - estimate, 0.0))
