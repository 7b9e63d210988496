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
    "residual_conv_kernel",
    "adjoint_conv_kernel",
    "operator_power_iteration",
    "chord_orthogonalization",
    "kernel_self_correlation",
    "gram_row_sums",
    "aol_rescaling",
    "hidden_major_kernel",
    "sll_scale",
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
            f"eps_bjorck must be None (no Björck) or a number >= 0 (0 = fixed iterations), got {eps_bjorck!r}."
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


# ---------------------------------------------------------------------------
# Residual blocks, CHORD (LiResNet; helper M3)
# ---------------------------------------------------------------------------


def residual_conv_kernel(kernel: ArrayLike) -> Any:
    """Kernel of the linear residual block x + conv(x): `kernel` plus the identity at the kernel centre.

    A stride-1 convolution with odd kernel sizes, "same" zero or circular
    padding and as many output as input channels computes x + conv(x, W)
    exactly as one convolution whose kernel is W with the identity matrix
    added at the centre tap (kh // 2, kw // 2).

    Args:
        kernel: array (kh, kw, c, c) with odd kh and kw.

    Returns:
        The block's kernel, same shape and dtype.
    """
    kh, kw, c_in, c_out = kernel.shape
    if kh % 2 == 0 or kw % 2 == 0 or c_in != c_out:
        raise ValueError(
            f"kernel must have odd spatial sizes and as many output as input channels, got shape {tuple(kernel.shape)}."
        )
    centre = ops.reshape(ops.one_hot(kh // 2 * kw + kw // 2, kh * kw, dtype=kernel.dtype), (kh, kw, 1, 1))
    return kernel + centre * ops.eye(c_in, dtype=kernel.dtype)


def adjoint_conv_kernel(kernel: ArrayLike) -> Any:
    """Kernel of the adjoint of a stride-1 convolution with symmetric padding: flipped, channels swapped.

    Valid for odd kernel sizes with "same" zero padding or circular padding
    (k // 2 on both sides): conv(., adjoint_conv_kernel(W)) with the same
    padding is the transpose of conv(., W). A dense kernel (2-D) gives its
    transpose (the adjoint of x -> x W).

    Args:
        kernel: array (kh, kw, c_in, c_out), or (n_in, n_out).
    """
    if len(kernel.shape) == 2:
        return ops.transpose(kernel)
    return ops.transpose(ops.flip(ops.flip(kernel, axis=0), axis=1), (0, 1, 3, 2))


def operator_power_iteration(
    apply: Any,
    apply_adjoint: Any,
    u: ArrayLike,
    maxiter: int = 1,
    eps: float = 0.0,
) -> tuple[Any, Any]:
    """Largest singular value of a linear operator A by power iteration on A^T A, from a persistent vector.

    The vector iterates without gradient; the returned sigma = ||A u|| carries
    the gradient of A (as in spectral normalization). Power iteration
    converges from below: sigma is an estimate for training, never a
    certificate (certify with the exact norm of the resulting operator).

    Args:
        apply: callable x -> A x (x has the shape of `u`).
        apply_adjoint: callable y -> A^T y.
        u: the previous vector (any shape accepted by `apply`).
        maxiter: number of iterations (>= 0).
        eps: stop once the vector moves less than eps (0: exactly `maxiter` iterations).

    Returns:
        (sigma, new_u).
    """
    if isinstance(maxiter, bool) or not isinstance(maxiter, int) or maxiter < 0:
        raise ValueError(f"maxiter must be an integer >= 0, got {maxiter!r}.")

    def step(vec):
        return _l2_normalize(ops.stop_gradient(apply_adjoint(apply(vec))))

    def distance(a, b):
        return ops.sqrt(ops.sum(ops.square(a - b)))

    u = ops.stop_gradient(_l2_normalize(u))
    if maxiter:
        u = ops.stop_gradient(_iterate(step, u, eps, maxiter, distance))
    sigma = ops.sqrt(ops.sum(ops.square(apply(u))))
    return sigma, u


def chord_orthogonalization(kernel: ArrayLike, eps: float = 1e-6) -> Any:
    """CHORD: orthonormalize the rows (or columns) of a dense kernel by a Cholesky factorization.

    For the operator P = kernel^T (units x n_in) with units <= n_in:
    G = P P^T + eps I = L L^T and P' = L^-1 P, so P' P'^T = I - eps L^-1 L^-T:
    every singular value is <= 1 and within eps of 1 for a well-conditioned
    kernel. With units > n_in, the columns are orthonormalized instead
    (kernel^T kernel is replaced by the same construction on kernel).

    Args:
        kernel: array (n_in, units), Keras layout (y = x @ kernel).
        eps: ridge added to the Gram matrix (> 0 keeps the factorization defined).

    Returns:
        The orthogonalized kernel, shape (n_in, units).
    """
    if len(kernel.shape) != 2:
        raise ValueError(f"kernel must be 2-D (n_in, units), got shape {tuple(kernel.shape)}.")
    if not eps > 0:
        raise ValueError(f"eps must be > 0, got {eps!r}.")
    n_in, units = kernel.shape
    rows = ops.transpose(kernel) if units <= n_in else kernel
    gram = ops.matmul(rows, ops.transpose(rows)) + eps * ops.eye(rows.shape[0], dtype=rows.dtype)
    factor = ops.cholesky(gram)
    orthogonal = ops.solve_triangular(factor, rows, lower=True)
    return ops.transpose(orthogonal) if units <= n_in else orthogonal


# ---------------------------------------------------------------------------------------------------
# AOL / SLL / CPL parametrizations (Prach & Lampert 2022; Araujo et al. 2023; Meunier et al. 2022).
#
# Conventions: a dense kernel K is (n_in, n_out) with y = x K; a conv kernel is (kh, kw, c_in, c_out).
# Every bound below is a Gershgorin-type bound on a Gram operator whose entries are (sums of) entries of
# the kernel's self-correlation; the proofs are in the layers' docstrings (deel_lip_ext/layers/aol.py and
# deel_lip_ext/layers/sll_cpl.py).
# ---------------------------------------------------------------------------------------------------


def kernel_self_correlation(kernel: ArrayLike) -> Any:
    """Self-correlation of a conv kernel over its output channels.

    For `kernel` (kh, kw, c_in, c_out) returns M (c_in, 2 kh - 1, 2 kw - 1, c_in) with
    M[c1, u, v, c2] = sum_{a, b, o} K[a + u - kh + 1, b + v - kw + 1, c1, o] K[a, b, c2, o]
    (zero outside the kernel): the kernel of the stride-1 operator P^T P of the conv P on a large
    enough torus. A 2-D kernel (n_in, n_out) gives K K^T as (n_in, 1, 1, n_in).
    """
    if len(kernel.shape) == 2:
        return ops.reshape(ops.matmul(kernel, ops.transpose(kernel)), (kernel.shape[0], 1, 1, kernel.shape[0]))
    kh, kw = kernel.shape[0], kernel.shape[1]
    images = ops.transpose(kernel, (2, 0, 1, 3))  # (c_in, kh, kw, c_out): one image per input channel
    images = ops.pad(images, ((0, 0), (kh - 1, kh - 1), (kw - 1, kw - 1), (0, 0)))
    filters = ops.transpose(kernel, (0, 1, 3, 2))  # (kh, kw, c_out, c_in)
    return ops.conv(images, filters, strides=1, padding="valid")


def gram_row_sums(kernel: ArrayLike, weights: ArrayLike | None = None) -> Any:
    """Weighted absolute row sums r_i = sum_{j, delta} |M[i, delta, j]| w_j / w_i of `kernel_self_correlation`.

    They bound the largest eigenvalue of D^-1 (P^T P) D for every padding (Gershgorin on the rows), hence
    `diag(r) - P^T P` is positive semi-definite (Schur test with positive weights `w`, all ones if None).
    """
    absolute = ops.sum(ops.abs(kernel_self_correlation(kernel)), axis=(1, 2))  # (n, n)
    if weights is None:
        return ops.sum(absolute, axis=1)
    return ops.matmul(absolute, weights) / weights


def aol_rescaling(kernel: ArrayLike, eps: float = 1e-12) -> Any:
    """AOL: multiply each input channel of `kernel` by (sum_j |P^T P|_ij + eps)^(-1/2).

    Works on dense kernels (n_in, n_out) and conv kernels (kh, kw, c_in, c_out); the result has
    operator norm <= 1 for every input size, stride and padding (zero, valid or circular).
    """
    scale = ops.rsqrt(gram_row_sums(kernel) + eps)
    if len(kernel.shape) == 2:
        return kernel * scale[:, None]
    return kernel * scale[None, None, :, None]


def hidden_major_kernel(kernel):
    """The kernel with input and output channels swapped: its Gram is P P^T (hidden channels)."""
    return ops.transpose(kernel) if len(kernel.shape) == 2 else ops.transpose(kernel, (0, 1, 3, 2))


def sll_scale(kernel: ArrayLike, log_q: ArrayLike, eps: float) -> Any:
    """SLL: the per-hidden-channel factor s = 2 / (t + eps), t_i = sum_j |P P^T|_ij q_j / q_i, q = exp(log_q).

    `kernel` maps the input to the hidden units (x -> P x, i.e. x K or conv(x, K)); the layer computes
    x - P^T (s * relu(P x + b)). diag(t + eps) - P P^T is PSD, which makes it 1-Lipschitz.
    """
    return 2.0 / (gram_row_sums(hidden_major_kernel(kernel), ops.exp(log_q)) + eps)


# --------------------------------------------------------------------------------------------------
# AOC (Boissin et al., 2025): an RKO strided kernel composed with a BCOP kernel (helper M2's section)
# --------------------------------------------------------------------------------------------------

__all__ += ["rko_strided_kernel", "compose_conv_kernels"]


def rko_strided_kernel(matrix: ArrayLike, strides: tuple[int, int], in_channels: int) -> Any:
    """The (sh, sw, c_in, c_out) kernel of a stride-s conv whose reshaped kernel is `matrix`.

    A convolution with kernel size = stride = s reads each input pixel exactly
    once: it is an `InvertibleDownSampling(s)` (a permutation) followed by the
    1 x 1 map `x -> x @ matrix`, so its operator has the singular values of
    `matrix` (orthonormal columns: co-isometry, rows: isometry) at every input
    size divisible by s, with circular or zero padding alike.

    Args:
        matrix: (sh * sw * c_in, c_out), rows ordered (row, column, channel).
        strides: (sh, sw).
        in_channels: c_in.

    Returns:
        The Keras kernel (sh, sw, c_in, c_out).

    Examples:
        >>> kernel = rko_strided_kernel(orthonormal_matrix, (2, 2), 16)  # matrix (64, c_out)
    """
    return ops.reshape(matrix, (strides[0], strides[1], in_channels, matrix.shape[-1]))


def compose_conv_kernels(first: ArrayLike, second: ArrayLike) -> Any:
    """Kernel of `conv(conv(x, first, stride 1), second, stride s)` as one stride-s convolution.

    With Keras' cross-correlation and row-vector taps, z[i] = sum_p x[i + p] first[p]
    and y[o] = sum_q z[o s + q] second[q] give y[o] = sum_t x[o s + t] K[t] with
    K[t] = sum_{p + q = t} first[p] @ second[q]: a kernel of size
    (kh1 + kh2 - 1, kw1 + kw2 - 1). The stride is the second conv's and does not
    enter the formula. Under circular padding the composed conv equals the
    composition up to a circular shift (a permutation), so it has the same
    singular values.

    Args:
        first: (kh1, kw1, c_in, c_mid), the stride-1 kernel applied first.
        second: (kh2, kw2, c_mid, c_out), the (strided) kernel applied second.

    Returns:
        The kernel (kh1 + kh2 - 1, kw1 + kw2 - 1, c_in, c_out).

    Examples:
        >>> kernel = compose_conv_kernels(bcop_kernel_2x2, rko_kernel_2x2)  # a 3 x 3 kernel for stride 2
    """
    kh1, kw1 = first.shape[:2]
    kh2, kw2 = second.shape[:2]
    composed = None
    for a in range(kh2):
        for b in range(kw2):
            term = ops.pad(ops.matmul(first, second[a, b]), ((a, kh2 - 1 - a), (b, kw2 - 1 - b), (0, 0), (0, 0)))
            composed = term if composed is None else composed + term
    return composed
