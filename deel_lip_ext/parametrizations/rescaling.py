"""Rescalings that make a kernel Lipschitz without iterating to convergence: AOL, SLL, CPL.

AOL (Prach & Lampert 2022), SLL (Araujo et al. 2023) and CPL (Meunier et al.
2022). A dense kernel K is (n_in, n_out) with y = x K; a conv kernel is
(kh, kw, c_in, c_out). Every bound below is a Gershgorin-type bound on a Gram
operator whose entries are (sums of) entries of the kernel's self-correlation;
CPL divides by an upper bound of ||P|| (`norm_bounds`);
the proofs are in the layers' docstrings (`deel_lip_ext.layers.aol`,
`deel_lip_ext.layers.sll_cpl`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from keras import ops
from numpy.typing import ArrayLike

from deel_lip_ext.parametrizations.iteration import operator_power_iteration
from deel_lip_ext.parametrizations.norm_bounds import upper_bounded_estimate

__all__ = [
    "kernel_self_correlation",
    "gram_row_sums",
    "aol_rescaling",
    "hidden_major_kernel",
    "sll_scale",
    "cpl_scale",
]


def kernel_self_correlation(kernel: ArrayLike) -> Any:
    r"""Self-correlation of a conv kernel over its output channels.

    For `kernel` (kh, kw, c_in, c_out) returns M (c_in, 2 kh - 1, 2 kw - 1, c_in) with
    $M[c_1, u, v, c_2] = \sum_{a, b, o} K[a + u - k_h + 1, b + v - k_w + 1, c_1, o] \, K[a, b, c_2, o]$
    (zero outside the kernel): the kernel of the stride-1 operator P^T P of the conv P on a large
    enough torus. A 2-D kernel (n_in, n_out) gives K K^T as (n_in, 1, 1, n_in).

    Args:
        kernel: conv kernel (kh, kw, c_in, c_out) or dense kernel (n_in, n_out).

    Examples:
        >>> kernel_self_correlation(keras.random.normal((3, 3, 2, 4))).shape  # (2, 5, 5, 2)
    """
    if len(kernel.shape) == 2:
        return ops.reshape(ops.matmul(kernel, ops.transpose(kernel)), (kernel.shape[0], 1, 1, kernel.shape[0]))
    if kernel.shape[2] == 1:
        # One input channel: the same M from a zero second channel, which M[0, ..., 0] never reads. PyTorch's
        # CPU convolution with a single output channel and several input channels (slow_conv2d) refuses to
        # differentiate its permuted weight ("grad_weight must be contiguous").
        padded = ops.concatenate([kernel, ops.zeros_like(kernel)], axis=2)
        return kernel_self_correlation(padded)[:1, :, :, :1]
    kh, kw = kernel.shape[0], kernel.shape[1]
    images = ops.transpose(kernel, (2, 0, 1, 3))  # (c_in, kh, kw, c_out): one image per input channel
    images = ops.pad(images, ((0, 0), (kh - 1, kh - 1), (kw - 1, kw - 1), (0, 0)))
    filters = ops.transpose(kernel, (0, 1, 3, 2))  # (kh, kw, c_out, c_in)
    return ops.conv(images, filters, strides=1, padding="valid")


def gram_row_sums(kernel: ArrayLike, weights: ArrayLike | None = None) -> Any:
    r"""Weighted absolute row sums $r_i = \sum_{j, \delta} |M[i, \delta, j]| \, w_j / w_i$ of `kernel_self_correlation`.

    They bound the largest eigenvalue of D^-1 (P^T P) D for every padding (Gershgorin on the rows), hence
    `diag(r) - P^T P` is positive semi-definite (Schur test with positive weights `w`, all ones if None).

    Args:
        kernel: conv kernel (kh, kw, c_in, c_out) or dense kernel (n_in, n_out).
        weights: positive weights w, a tensor (c_in,) (or (n_in,)); None: all ones.

    Returns:
        A tensor (c_in,) (or (n_in,)).

    Examples:
        >>> gram_row_sums(keras.random.normal((8, 4)))  # (8,)
    """
    absolute = ops.sum(ops.abs(kernel_self_correlation(kernel)), axis=(1, 2))  # (n, n)
    if weights is None:
        return ops.sum(absolute, axis=1)
    return ops.matmul(absolute, weights) / weights


def aol_rescaling(kernel: ArrayLike, eps: float = 1e-12) -> Any:
    """AOL: multiply each input channel of `kernel` by (sum_j |P^T P|_ij + eps)^(-1/2).

    Works on dense kernels (n_in, n_out) and conv kernels (kh, kw, c_in, c_out); the result has
    operator norm <= 1 for every input size, stride and padding (zero, valid or circular).

    Args:
        kernel: conv kernel (kh, kw, c_in, c_out) or dense kernel (n_in, n_out).
        eps: added to each row sum before the inverse square root (keeps a zero channel finite).

    Returns:
        The rescaled kernel, of the shape of `kernel`.

    Examples:
        >>> kernel = aol_rescaling(keras.random.normal((16, 8)))
    """
    kernel = ops.convert_to_tensor(kernel)  # numpy * a torch tensor goes through numpy's operator
    scale = ops.rsqrt(gram_row_sums(kernel) + eps)
    if len(kernel.shape) == 2:
        return kernel * scale[:, None]
    return kernel * scale[None, None, :, None]


def hidden_major_kernel(kernel: ArrayLike) -> Any:
    """The kernel with input and output channels swapped: its Gram is P P^T (hidden channels).

    Args:
        kernel: conv kernel (kh, kw, c_in, c_out) or dense kernel (n_in, n_out).

    Examples:
        >>> hidden_major_kernel(keras.ops.ones((3, 3, 2, 5))).shape  # (3, 3, 5, 2)
    """
    return ops.transpose(kernel) if len(kernel.shape) == 2 else ops.transpose(kernel, (0, 1, 3, 2))


def sll_scale(kernel: ArrayLike, log_q: ArrayLike, eps: float) -> Any:
    """SLL: the per-hidden-channel factor s = 2 / (t + eps), t_i = sum_j |P P^T|_ij q_j / q_i, q = exp(log_q).

    `kernel` maps the input to the hidden units (x -> P x, i.e. x K or conv(x, K)); the layer computes
    x - P^T (s * relu(P x + b)). diag(t + eps) - P P^T is PSD, which makes it 1-Lipschitz.

    Args:
        kernel: input-to-hidden kernel, conv (kh, kw, c_in, c_hidden) or dense (n_in, n_hidden).
        log_q: log of the positive weights q, a tensor (c_hidden,) (or (n_hidden,)).
        eps: added to t (> 0 keeps s finite).

    Returns:
        The factor s, a tensor (c_hidden,) (or (n_hidden,)).

    Examples:
        >>> s = sll_scale(keras.random.normal((16, 8)), keras.ops.zeros((8,)), 1e-6)
    """
    return 2.0 / (gram_row_sums(hidden_major_kernel(kernel), ops.exp(log_q)) + eps)


def cpl_scale(
    apply: Callable[[Any], Any],
    apply_adjoint: Callable[[Any], Any],
    u: ArrayLike,
    units: int,
    maxiter: int,
    eps: float,
    norm_bound: ArrayLike,
) -> tuple[Any, Any]:
    """CPL: the factor s = 2 / (sigma^2 + eps) for every hidden unit, sigma an UPPER bound of ||P||.

    sigma is max(power-iteration estimate, `norm_bound`) in value (so s ||P||^2 <= 2 and the layer is
    1-Lipschitz at every step, however stale the persistent vector), with the power iteration's gradient
    (`upper_bounded_estimate`).

    Args:
        apply: callable x -> P x.
        apply_adjoint: callable z -> P^T z.
        u: the persistent power-iteration vector (shaped like one input).
        units: number of hidden units.
        maxiter: power iterations.
        eps: positive number added to sigma^2.
        norm_bound: a provable upper bound of ||P|| (e.g. `dense_norm_bound`, `conv_norm_bound`).

    Returns:
        `(factor (units,), new_u)`.

    Examples:
        >>> kernel = keras.random.normal((6, 4))
        >>> s, u = cpl_scale(lambda x: x @ kernel, lambda z: z @ kernel.T, keras.ops.ones((1, 6)), 4, 1, 1e-6,
        ...                  dense_norm_bound(kernel))
    """
    sigma, u = operator_power_iteration(apply, apply_adjoint, u, maxiter=maxiter)
    sigma = upper_bounded_estimate(sigma, norm_bound)
    return ops.ones((units,), "float32") * (2.0 / (ops.square(sigma) + eps)), u
