"""Parametrizations: pure functions from raw tensors to constrained kernels.

Everything here is written with `keras.ops` only, so it runs under the
TensorFlow, JAX and PyTorch backends. No function holds state: the
power-iteration vector is passed in and the updated one returned, and the
layer that owns it decides whether to store it (only in training mode).

Orthogonalization always runs in float32, even when the model computes in
float16/bfloat16, because Björck iterations lose orthogonality quickly in low
precision.

Defaults are deel-lip's (`DEFAULT_EPS_SPECTRAL`, ...). An `eps` of 0 selects
the *fixed-iteration* mode: exactly `maxiter` unrolled iterations and no
data-dependent loop, which is what XLA/`jit_compile` likes best.
"""

from __future__ import annotations

import math
from typing import Any

import keras
from keras import ops
from numpy.typing import ArrayLike

DEFAULT_EPS_SPECTRAL = 1e-3
DEFAULT_MAXITER_SPECTRAL = 10
DEFAULT_EPS_BJORCK = 1e-3
DEFAULT_MAXITER_BJORCK = 15
DEFAULT_BETA_BJORCK = 0.5

__all__ = [
    "DEFAULT_EPS_SPECTRAL",
    "DEFAULT_MAXITER_SPECTRAL",
    "DEFAULT_EPS_BJORCK",
    "DEFAULT_MAXITER_BJORCK",
    "DEFAULT_BETA_BJORCK",
    "check_normalizer_args",
    "power_iteration",
    "spectral_normalization",
    "bjorck_normalization",
    "reshaped_kernel_orthogonalization",
    "frobenius_normalization",
    "spectral_normalization_conv",
]


def check_normalizer_args(
    eps_spectral: float = DEFAULT_EPS_SPECTRAL,
    eps_bjorck: float = DEFAULT_EPS_BJORCK,
    beta_bjorck: float = DEFAULT_BETA_BJORCK,
    maxiter_spectral: int = DEFAULT_MAXITER_SPECTRAL,
    maxiter_bjorck: int = DEFAULT_MAXITER_BJORCK,
):
    """Validate the spectral/Björck hyper-parameters; raise `ValueError` naming the bad one."""
    if not _is_number(eps_spectral) or eps_spectral < 0:
        raise ValueError(f"eps_spectral must be a number >= 0, got {eps_spectral!r}.")
    if eps_bjorck is not None and (not _is_number(eps_bjorck) or eps_bjorck < 0):
        raise ValueError(
            f"eps_bjorck must be None (no Björck) or a number >= 0 (0 = fixed "
            f"iterations), got {eps_bjorck!r}."
        )
    if not _is_number(beta_bjorck) or not 0 < beta_bjorck <= 0.5:
        raise ValueError(f"beta_bjorck must be in ]0, 0.5], got {beta_bjorck!r}.")
    for name, value in (("maxiter_spectral", maxiter_spectral), ("maxiter_bjorck", maxiter_bjorck)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be an integer >= 1, got {value!r}.")


def _is_number(value):
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _l2_normalize(x, eps=1e-12):
    return x / ops.sqrt(ops.maximum(ops.sum(ops.square(x)), eps))


def _iterate(body, state, eps, maxiter, distance):
    """Run `state = body(state)` up to `maxiter` times.

    With `eps > 0` stop as soon as `distance(old, new) < eps` (deel-lip's
    semantics, a `while_loop`); with `eps == 0` unroll exactly `maxiter` steps.
    """
    if not eps:
        for _ in range(maxiter):
            state = body(state)
        return state

    def cond(i, current, previous):
        return ops.logical_and(i < maxiter, distance(current, previous) >= eps)

    def step(i, current, previous):
        return i + 1, body(current), current

    _, state, _ = ops.while_loop(cond, step, (1, body(state), state), maximum_iterations=maxiter)
    return state


def power_iteration(
    matrix: ArrayLike, u: ArrayLike, maxiter: int = DEFAULT_MAXITER_SPECTRAL, eps: float = DEFAULT_EPS_SPECTRAL
) -> tuple[Any, Any]:
    """Largest singular value of a 2-D `matrix` by power iteration.

    Args:
        matrix: tensor of shape (m, n).
        u: right singular vector estimate of shape (1, n) (warm start).
        maxiter: maximal number of iterations.
        eps: stop when the vector moves less than `eps` (0: exactly `maxiter`).

    Returns:
        `(u, sigma)`: the new vector (gradient stopped) and the estimate
        `sigma = ||u matrix^T||`, differentiable with respect to `matrix`.
        Power iteration approaches sigma_max from below.
    """
    matrix_sg = ops.stop_gradient(matrix)

    def step(vec):
        return _l2_normalize(ops.matmul(ops.matmul(vec, ops.transpose(matrix_sg)), matrix_sg))

    u = _iterate(
        step, _l2_normalize(ops.stop_gradient(u)), eps, maxiter, lambda a, b: ops.sqrt(ops.sum(ops.square(a - b)))
    )
    u = ops.stop_gradient(u)
    sigma = ops.sqrt(ops.sum(ops.square(ops.matmul(u, ops.transpose(matrix)))))
    return u, sigma


def _start_vector(u: ArrayLike | None, size: int, dtype: str) -> Any:
    """The power-iteration start: `u`, or a random normal (1, size) vector when `u` is None (deel-lip)."""
    return keras.random.normal((1, size), dtype=dtype) if u is None else u


def spectral_normalization(
    kernel: ArrayLike,
    u: ArrayLike | None = None,
    eps: float = DEFAULT_EPS_SPECTRAL,
    maxiter: int = DEFAULT_MAXITER_SPECTRAL,
) -> tuple[Any, Any, Any]:
    """Divide a kernel by its largest singular value.

    The kernel is seen as the matrix `reshape(kernel, (-1, kernel.shape[-1]))`.

    Args:
        kernel: tensor whose last axis is the output axis.
        u: power-iteration vector of shape (1, kernel.shape[-1]); None starts
            from a random normal vector (deel-lip).
        eps: stopping tolerance of the power iteration, also added to sigma so
            that the result stays in Björck's convergence region.
        maxiter: maximal number of power iterations.

    Returns:
        `(normalized_kernel, u, sigma)`.

    Examples:
        >>> w = keras.random.normal((16, 8))
        >>> w_bar, u, sigma = spectral_normalization(w, keras.random.normal((1, 8)))
    """
    matrix = ops.reshape(kernel, (-1, kernel.shape[-1]))
    u = _start_vector(u, kernel.shape[-1], matrix.dtype)
    u, sigma = power_iteration(matrix, u, maxiter=maxiter, eps=eps)
    return kernel / (sigma + eps), u, sigma


def bjorck_normalization(
    w: ArrayLike,
    eps: float = DEFAULT_EPS_BJORCK,
    beta: float = DEFAULT_BETA_BJORCK,
    maxiter: int = DEFAULT_MAXITER_BJORCK,
):
    """Björck-Bowie orthonormalization of a 2-D matrix (order 1).

    Iterates `W <- (1 + beta) W - beta W W^T W` (the product is taken on the
    smaller Gram matrix). Every singular value s < sqrt(3) moves to
    `1.5 s - 0.5 s^3 <= 1`, so after one iteration the largest singular value
    is at most 1 even when the iteration has not converged.

    Args:
        w: matrix of shape (m, n) with singular values below sqrt(3)
            (e.g. the output of `spectral_normalization`).
        eps: stop when `||W_t - W_{t-1}||_F < eps`; 0 runs exactly `maxiter`
            unrolled iterations.
        beta: step, in ]0, 0.5].
        maxiter: maximal number of iterations.

    Examples:
        >>> w_orth = bjorck_normalization(w / 2.0, eps=0.0, maxiter=20)
    """
    tall = w.shape[0] >= w.shape[1]

    def step(mat):
        if tall:
            return (1 + beta) * mat - beta * ops.matmul(mat, ops.matmul(ops.transpose(mat), mat))
        return (1 + beta) * mat - beta * ops.matmul(ops.matmul(mat, ops.transpose(mat)), mat)

    return _iterate(step, w, eps, maxiter, lambda a, b: ops.sqrt(ops.sum(ops.square(a - b))))


def reshaped_kernel_orthogonalization(
    kernel: ArrayLike,
    u: ArrayLike,
    adjustment_coef: float = 1.0,
    eps_spectral: float = DEFAULT_EPS_SPECTRAL,
    eps_bjorck: float = DEFAULT_EPS_BJORCK,
    beta: float = DEFAULT_BETA_BJORCK,
    maxiter_spectral: int = DEFAULT_MAXITER_SPECTRAL,
    maxiter_bjorck: int = DEFAULT_MAXITER_BJORCK,
) -> tuple[Any, Any, Any]:
    """RKO: spectral normalization then Björck on the reshaped kernel.

    The kernel is reshaped to (-1, kernel.shape[-1]), normalized, orthonormalized
    (skipped when `eps_bjorck` is None: spectral normalization only), multiplied
    by `adjustment_coef` and reshaped back. `u` is the power-iteration vector
    (1, kernel.shape[-1]), or None for a random start (deel-lip).

    Returns:
        `(kernel_bar, u, sigma)`.

    Examples:
        >>> w_bar, u, sigma = reshaped_kernel_orthogonalization(kernel, u, 1.0 / 3.0)
    """
    matrix = ops.reshape(kernel, (-1, kernel.shape[-1]))
    matrix, u, sigma = spectral_normalization(matrix, u, eps=eps_spectral, maxiter=maxiter_spectral)
    if eps_bjorck is not None:
        matrix = bjorck_normalization(matrix, eps=eps_bjorck, beta=beta, maxiter=maxiter_bjorck)
    return ops.reshape(matrix * adjustment_coef, kernel.shape), u, sigma


def frobenius_normalization(kernel: ArrayLike, disjoint_neurons: bool = False, eps: float = 1e-12):
    """Divide a kernel by its Frobenius norm.

    Args:
        kernel: tensor whose last axis is the output axis.
        disjoint_neurons: normalize every output column separately (each output
            is then 1-Lipschitz on its own; the whole map is sqrt(units)-Lipschitz).
        eps: floor of the squared norm, avoids a division by zero.

    Examples:
        >>> w_bar = frobenius_normalization(kernel)
    """
    axes = tuple(range(len(kernel.shape) - 1)) if disjoint_neurons else None
    squared = ops.sum(ops.square(kernel), axis=axes, keepdims=disjoint_neurons)
    return kernel / ops.sqrt(ops.maximum(squared, eps))


def spectral_normalization_conv(
    kernel: ArrayLike,
    u: ArrayLike | None,
    stride: int = 1,
    conv_first: bool = True,
    pad_func: Any = None,
    eps: float = DEFAULT_EPS_SPECTRAL,
    maxiter: int = DEFAULT_MAXITER_SPECTRAL,
) -> tuple[Any, Any, Any]:
    """Divide a conv kernel by the largest singular value of its *convolution operator* (deel-lip).

    Power iteration on the operator A = conv(., kernel, stride, "same" zero
    padding) and its adjoint (the transposed convolution), at the input size
    given by `u`. Like every power iteration the estimate approaches sigma
    from below: this normalizer is a deel-lip utility, not a certificate
    (none of the library's layers uses it).

    Args:
        kernel: (kh, kw, c_in, c_out).
        u: start vector: an input (1, H, W, c_in) if `conv_first`, else an
            output (1, H / stride, W / stride, c_out); H and W must be
            multiples of `stride`.
        stride: int stride of the convolution (deel-lip accepted a float; it
            must be a whole number).
        conv_first: iterate on A^T A (True) or A A^T (False).
        pad_func: must be None ("same" zero padding): the adjoint of an
            arbitrary padding function is not available.
        eps: stop when u moves less than `eps` (0: exactly `maxiter` steps);
            eps < 0 returns the kernel unchanged (deel-lip).
        maxiter: maximal number of iterations.

    Returns:
        `(kernel / sigma, u, sigma)`.

    Examples:
        >>> w_bar, u, sigma = spectral_normalization_conv(kernel, keras.random.normal((1, 8, 8, 3)))
    """
    if pad_func is not None:
        raise ValueError("pad_func must be None: only 'same' zero padding has a known adjoint here.")
    if float(stride) != int(stride) or int(stride) < 1:
        raise ValueError(f"stride must be a whole number >= 1, got {stride!r}.")
    stride = int(stride)
    if u is None:
        raise ValueError("u must be given: its shape (1, H, W, channels) fixes the input size of the operator.")
    if eps < 0:
        return kernel, u, ops.ones((), dtype=kernel.dtype)
    if conv_first and any(size % stride for size in u.shape[1:3]):
        raise ValueError(f"the spatial size of u {tuple(u.shape)} must be a multiple of stride {stride}.")
    kernel_sg = ops.stop_gradient(kernel)

    def forward(x, w):
        return ops.conv(x, w, strides=stride, padding="same")

    def adjoint(y, w):
        return ops.conv_transpose(y, w, strides=stride, padding="same")

    first, second = (forward, adjoint) if conv_first else (adjoint, forward)

    def step(vec):
        return _l2_normalize(second(first(vec, kernel_sg), kernel_sg))

    def distance(a, b):
        return ops.sqrt(ops.sum(ops.square(a - b)))

    u = ops.stop_gradient(_iterate(step, _l2_normalize(ops.stop_gradient(u)), eps, maxiter, distance))
    sigma = ops.sqrt(ops.sum(ops.square(first(u, kernel))))
    return kernel / sigma, u, sigma
