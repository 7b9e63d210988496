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
(restriction then crop) of the circular convolution on the (n + k - 1) torus, whose norm is therefore an upper
bound. A real kernel has K^(-omega) = conj(K^(omega)) (same singular values): half the frequencies suffice.

Computed in float32, a bound can come out a few ulps below the exact norm; `FLOAT32_MARGIN` (applied by
`upper_bounded_estimate`) covers that rounding. Certificates never rely on these float32 values: layers certify
with float64 norms (`deel_lip_ext.spectrum`).

Layers use these bounds (without gradient) to make the value they divide by an upper bound of the norm, while
the gradient still flows through their power-iteration estimate (`upper_bounded_estimate`).
"""

from __future__ import annotations

import math
from typing import Any

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


def _hermitian_square(real, imag):
    """(X + iY)^2 for a Hermitian X + iY (X symmetric, Y antisymmetric): X^2 - Y^2 + i (XY + YX)."""
    return ops.matmul(real, real) - ops.matmul(imag, imag), ops.matmul(real, imag) + ops.matmul(imag, real)


def _gram_start(real, imag):
    """Gram iteration state (H_real, H_imag, log_lambda) of a batch of (complex) matrices: H = the smaller Gram."""
    real = ops.cast(real, "float32")
    imag = ops.zeros_like(real) if imag is None else ops.cast(imag, "float32")
    m, n = real.shape[-2], real.shape[-1]
    t_real, t_imag = ops.swapaxes(real, -1, -2), ops.swapaxes(imag, -1, -2)
    if m < n:  # H = M M^H (m x m)
        h_real = ops.matmul(real, t_real) + ops.matmul(imag, t_imag)
        h_imag = ops.matmul(imag, t_real) - ops.matmul(real, t_imag)
    else:  # H = M^H M (n x n)
        h_real = ops.matmul(t_real, real) + ops.matmul(t_imag, imag)
        h_imag = ops.matmul(t_real, imag) - ops.matmul(t_imag, real)
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


def _fold_axis(x, size, axis):
    """Sum the entries of `axis` modulo `size` (the kernel a circular conv on a smaller torus really applies)."""
    length = x.shape[axis]
    if length <= size:
        pads = [(0, 0)] * len(x.shape)
        pads[axis] = (0, size - length)
        return ops.pad(x, pads)
    folds = -(-length // size)
    pads = [(0, 0)] * len(x.shape)
    pads[axis] = (0, folds * size - length)
    x = ops.pad(x, pads)
    shape = list(x.shape)
    shape[axis : axis + 1] = [folds, size]
    return ops.sum(ops.reshape(x, shape), axis=axis)


def conv_norm_bound(kernel: ArrayLike, input_size: tuple[int, int], padding: str, n_iter: int = GRAM_ITERATIONS) -> Any:
    """Upper bound of the norm of a stride-1 convolution at an input size ("same" zero or circular padding).

    Args:
        kernel: conv kernel (kh, kw, c_in, c_out).
        input_size: (height, width) of the input.
        padding: "circular" (torus of the input size) or "same" (the (n + k - 1) torus bounds it).
        n_iter: Gram squarings per frequency.

    Returns:
        A scalar tensor >= the operator norm of the convolution at that size.

    Examples:
        >>> conv_norm_bound(keras.random.normal((3, 3, 4, 8)), (8, 8), "same")
    """
    kernel = ops.cast(kernel, "float32")
    kh, kw = kernel.shape[0], kernel.shape[1]
    height, width = (int(s) for s in input_size)
    if padding == "same":
        height, width = height + kh - 1, width + kw - 1
    elif padding != "circular":
        raise ValueError(f"padding must be 'same' or 'circular', got {padding!r}.")
    taps = ops.transpose(kernel, (2, 3, 0, 1))  # (c_in, c_out, kh, kw)
    taps = _fold_axis(_fold_axis(taps, height, 2), width, 3)
    real, imag = ops.fft2((taps, ops.zeros_like(taps)))
    # K^(-omega) = conj K^(omega): the rows 0..height // 2 of the first frequency axis cover every spectrum.
    half = height // 2 + 1
    real, imag = real[:, :, :half], imag[:, :, :half]
    channels_in, channels_out = kernel.shape[2], kernel.shape[3]
    real = ops.reshape(ops.transpose(real, (2, 3, 0, 1)), (-1, channels_in, channels_out))
    imag = ops.reshape(ops.transpose(imag, (2, 3, 0, 1)), (-1, channels_in, channels_out))
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
