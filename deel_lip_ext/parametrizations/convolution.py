"""Constraints on convolution kernels: conv spectral normalization, OSSN, LiResNet blocks, BCOP, AOC, SVCM.

Conventions: a kernel is (kh, kw, c_in, c_out), Keras' cross-correlation with
row-vector taps (output = input @ tap). Everything but `clip_and_mask` (an
eager numpy projection: it needs complex SVDs, which `keras.ops` lacks) is
`keras.ops` only.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
from keras import ops
from numpy.typing import ArrayLike

from deel_lip_ext.parametrizations.iteration import (
    DEFAULT_EPS_SPECTRAL,
    DEFAULT_MAXITER_SPECTRAL,
    l2_normalize,
    operator_power_iteration,
    power_iterate,
)
from deel_lip_ext.parametrizations.norm_bounds import conv_norm_bound, upper_bounded_estimate
from deel_lip_ext.parametrizations.padding import circular_pad
from deel_lip_ext.spectrum import circular_pad_widths

__all__ = [
    "conv_with_padding",
    "pad_then_conv",
    "padded_conv_operator",
    "adjoint_conv_kernel",
    "residual_conv_kernel",
    "spectral_normalization_conv",
    "ossn_spectral_norm",
    "ossn_normalization",
    "residual_block_normalization",
    "bcop_kernel",
    "rko_strided_kernel",
    "compose_conv_kernels",
    "aoc_kernel",
    "clip_and_mask",
]


def conv_with_padding(x: ArrayLike, kernel: ArrayLike, padding: str) -> Any:
    """Stride-1 convolution of a channels-last batch with "same" zero padding or "circular" padding.

    Args:
        x: input batch (N, H, W, c_in).
        kernel: conv kernel (kh, kw, c_in, c_out).
        padding: "circular" (wrap pad of `circular_pad_widths`); any other value is Keras's "same".

    Returns:
        A tensor (N, H, W, c_out).

    Examples:
        >>> y = conv_with_padding(keras.random.normal((1, 8, 8, 3)), keras.random.normal((3, 3, 3, 4)), "circular")
    """
    if padding == "circular":
        return ops.conv(circular_pad(x, circular_pad_widths(kernel.shape[:2])), kernel, padding="valid")
    return ops.conv(x, kernel, padding="same")


def pad_then_conv(x: ArrayLike, kernel: ArrayLike, pads: tuple, circular: bool) -> Any:
    """Stride-1 "valid" convolution after a wrap-around or zero pad of `pads` ((top, bottom), (left, right)).

    Args:
        x: input batch (N, H, W, c_in).
        kernel: conv kernel (kh, kw, c_in, c_out).
        pads: `((top, bottom), (left, right))` pad widths of the input, ints >= 0.
        circular: wrap-around padding if True, zeros if False.

    Returns:
        A tensor (N, H + top + bottom - kh + 1, W + left + right - kw + 1, c_out).
    """
    if circular:
        x = circular_pad(x, pads)
    elif any(p for pair in pads for p in pair):
        x = ops.pad(x, ((0, 0),) + tuple(pads) + ((0, 0),))
    return ops.conv(x, kernel, strides=1, padding="valid")


def adjoint_conv_kernel(kernel: ArrayLike) -> Any:
    """Kernel of the adjoint of a stride-1 convolution with symmetric padding: flipped, channels swapped.

    Valid for odd kernel sizes with "same" zero padding or circular padding
    (k // 2 on both sides): conv(., adjoint_conv_kernel(W)) with the same
    padding is the transpose of conv(., W). A dense kernel (2-D) gives its
    transpose (the adjoint of x -> x W).

    Args:
        kernel: array (kh, kw, c_in, c_out), or (n_in, n_out).

    Examples:
        >>> adjoint = adjoint_conv_kernel(keras.random.normal((3, 3, 4, 8)))  # (3, 3, 8, 4)
    """
    if len(kernel.shape) == 2:
        return ops.transpose(kernel)
    return ops.transpose(ops.flip(ops.flip(kernel, axis=0), axis=1), (0, 1, 3, 2))


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

    Examples:
        >>> block = residual_conv_kernel(keras.ops.zeros((3, 3, 4, 4)))  # the identity convolution
    """
    kh, kw, c_in, c_out = kernel.shape
    if kh % 2 == 0 or kw % 2 == 0 or c_in != c_out:
        raise ValueError(
            f"kernel must have odd spatial sizes and as many output as input channels, got shape {tuple(kernel.shape)}."
        )
    centre = ops.reshape(ops.one_hot(kh // 2 * kw + kw // 2, kh * kw, dtype=kernel.dtype), (kh, kw, 1, 1))
    return kernel + centre * ops.eye(c_in, dtype=kernel.dtype)


def spectral_normalization_conv(
    kernel: ArrayLike,
    u: ArrayLike | None,
    stride: int = 1,
    conv_first: bool = True,
    pad_func: Callable | None = None,
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
        eps: stop when u moves less than `eps` (0: exactly `maxiter` steps),
            also added to sigma like `spectral_normalization` (deel-lip);
            eps < 0 returns the kernel unchanged (deel-lip).
        maxiter: maximal number of iterations.

    Returns:
        `(kernel / (sigma + eps), u, sigma)`, as deel-lip.

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
    kernel = ops.convert_to_tensor(kernel)  # numpy input: torch's stop_gradient takes tensors only
    kernel_sg = ops.stop_gradient(kernel)

    def forward(x, w):
        return ops.conv(x, w, strides=stride, padding="same")

    def adjoint(y, w):
        return ops.conv_transpose(y, w, strides=stride, padding="same")

    first, second = (forward, adjoint) if conv_first else (adjoint, forward)
    u = power_iterate(lambda v: first(v, kernel_sg), lambda z: second(z, kernel_sg), u, maxiter, eps)
    sigma = ops.sqrt(ops.sum(ops.square(first(u, kernel))))
    return kernel / (sigma + eps), u, sigma


def padded_conv_operator(kernel: ArrayLike, pads: tuple, circular: bool) -> tuple[Callable, Callable]:
    """`(forward, adjoint)` of the stride-1 conv `pad_then_conv(., kernel, pads, circular)`.

    The adjoint of y[p] = sum_a x[p + a - before] K[a] is
    x[q] = sum_a y[q - a + before] K[a]^T: a correlation with the flipped,
    channel-swapped kernel padded by (k - 1 - before, k - 1 - after),
    wrap-around or zeros alike.

    Args:
        kernel: conv kernel (kh, kw, c_in, c_out).
        pads: `((top, bottom), (left, right))` pad widths of the input, ints >= 0.
        circular: wrap-around padding if True, zeros if False.

    Examples:
        >>> forward, adjoint = padded_conv_operator(kernel, ((1, 1), (1, 1)), circular=True)
    """
    adjoint_pads = tuple((k - 1 - before, k - 1 - after) for k, (before, after) in zip(kernel.shape[:2], pads))
    adjoint = adjoint_conv_kernel(kernel)

    def forward(x):
        return pad_then_conv(x, kernel, pads, circular)

    def backward(y):
        return pad_then_conv(y, adjoint, adjoint_pads, circular)

    return forward, backward


def ossn_spectral_norm(
    kernel: ArrayLike, u: ArrayLike, pads: tuple, circular: bool, iterations: int
) -> tuple[Any, Any]:
    """OSSN's estimate of the norm of the stride-1 conv `pad_then_conv(., kernel, pads, circular)` (Gouk et al.).

    `iterations` alternating power iterations (no gradient) from the
    persistent output-shaped vector u: v = N(A^T u), u = N(A v). Then
    sigma = u^T A v, differentiable in the kernel.

    Args:
        kernel: conv kernel (kh, kw, c_in, c_out).
        u: power-iteration vector of the conv's output shape (1, H_out, W_out, c_out) (warm start).
        pads: `((top, bottom), (left, right))` pad widths of the input, ints >= 0.
        circular: wrap-around padding if True, zeros if False.
        iterations: number of power-iteration steps.

    Returns:
        `(sigma, new_u)`.
    """
    forward_sg, backward_sg = padded_conv_operator(ops.stop_gradient(kernel), pads, circular)
    u = power_iterate(backward_sg, forward_sg, u, iterations, normalize_halves=True)
    v = ops.stop_gradient(l2_normalize(backward_sg(u)))
    forward, _ = padded_conv_operator(kernel, pads, circular)
    return ops.sum(u * forward(v)), u


def ossn_normalization(
    kernel: ArrayLike, u: ArrayLike, pads: tuple, circular: bool, iterations: int, k_coef_lip: float = 1.0
) -> tuple[Any, Any]:
    """One-sided spectral normalization: `k * kernel / max(sigma, 1)`, sigma from `ossn_spectral_norm`.

    Args:
        kernel: as in `ossn_spectral_norm`.
        u: as in `ossn_spectral_norm`.
        pads: as in `ossn_spectral_norm`.
        circular: as in `ossn_spectral_norm`.
        iterations: as in `ossn_spectral_norm`.
        k_coef_lip: the target Lipschitz constant k (the factor k of `k * kernel / max(sigma, 1)`).

    Returns:
        `(kernel, new_u)`.
    """
    sigma, u = ossn_spectral_norm(kernel, u, pads, circular, iterations)
    return kernel * (k_coef_lip / ops.maximum(sigma, 1.0)), u


def residual_block_normalization(
    kernel: ArrayLike, u: ArrayLike, padding: str, maxiter: int, k_coef_lip: float = 1.0
) -> tuple[Any, Any]:
    """LiResNet: the kernel of k * (x + conv(x, W)) / sigma, sigma an UPPER bound of ||I + W|| at the input size.

    sigma is, in value, max(power iteration on the whole block with the persistent vector, the Gram-iteration
    bound `conv_norm_bound` at the input size u.shape[1:3]), so the block is k-Lipschitz at every step (power
    iteration alone converges from below and lags behind an optimizer step); the gradient is the power
    iteration's (`upper_bounded_estimate`).

    Args:
        kernel: the residual kernel W (kh, kw, c, c), odd sizes.
        u: the persistent vector, shaped like one input (1, H, W, c).
        padding: "same" or "circular".
        maxiter: power iterations.
        k_coef_lip: the target constant.

    Returns:
        `(block_kernel, new_u)`.

    Examples:
        >>> block, u = residual_block_normalization(keras.random.normal((3, 3, 4, 4)) * 0.1,
        ...                                         keras.random.normal((1, 8, 8, 4)), "same", 1)
    """
    block = residual_conv_kernel(kernel)
    adjoint = adjoint_conv_kernel(ops.stop_gradient(block))
    sigma, u = operator_power_iteration(
        lambda x: conv_with_padding(x, block, padding), lambda y: conv_with_padding(y, adjoint, padding), u, maxiter
    )
    bound = conv_norm_bound(ops.stop_gradient(block), tuple(u.shape[1:3]), padding)
    return block * (k_coef_lip / upper_bounded_estimate(sigma, bound)), u


def _block_convolve(kernel, frame, axis, side):
    """Block convolution of `kernel` with the 2-tap kernel [P, I-P] along `axis`, P = frame frame^T.

    `kernel` holds taps (kh, kw, rows, cols) in Keras' row-vector convention
    (output = input @ tap). With K[-1] = K[m] = 0 the new taps are
    K[i-1] + (K[i] - K[i-1]) P when P acts after K (side "right") and
    K[i-1] + P (K[i] - K[i-1]) when it acts before (side "left").
    """
    zeros = ops.zeros_like(kernel[:1] if axis == 0 else kernel[:, :1])
    current = ops.concatenate([kernel, zeros], axis=axis)
    previous = ops.concatenate([zeros, kernel], axis=axis)
    difference = current - previous
    if side == "right":
        projected = ops.matmul(ops.matmul(difference, frame), ops.transpose(frame))
    else:
        projected = ops.matmul(frame, ops.matmul(ops.transpose(frame), difference))
    return previous + projected


def bcop_kernel(orthogonal: ArrayLike, kernel_size: tuple[int, int], in_channels: int, out_channels: int) -> Any:
    """The BCOP kernel (kh, kw, c_in, c_out) of a stack of orthogonal c x c matrices (Li et al., 2019).

    H is the first matrix; the first floor(c/2) columns M_i of each other one
    define the symmetric projectors P_i = M_i M_i^T. The kernel is the block
    convolution of H with the 2x1 kernels [P; I-P] and the 1x2 kernels
    [Q, I-Q], whose symbols P + (I-P) z are unitary on the unit circle.
    Slicing H first and growing the block convolution from the sliced side
    gives the c_in x c_out kernel at a fraction of the cost of slicing at the end.

    Args:
        orthogonal: (kh + kw - 1, c, c) orthogonal matrices, c = max(c_in, c_out):
            H, then the kh - 1 vertical and kw - 1 horizontal projector frames.
        kernel_size: (kh, kw).
        in_channels: c_in, the input channels.
        out_channels: c_out, the output channels.

    Returns:
        A Keras kernel whose circular convolution is an isometry
        (c_in <= c_out) or a co-isometry (c_in > c_out).

    Examples:
        >>> kernel = bcop_kernel(orthonormal_stack, (3, 3), 16, 32)
    """
    kh, kw = kernel_size
    channels = orthogonal.shape[-1]
    frames = orthogonal[1:, :, : channels // 2]
    if in_channels <= out_channels:
        # c = c_out: H's first c_in rows; the projectors act after it, on the full side.
        kernel, side = orthogonal[0][:in_channels], "right"
    else:
        # c = c_in: H's first c_out columns; the projectors act before it.
        kernel, side = orthogonal[0][:, :out_channels], "left"
    kernel = ops.reshape(kernel, (1, 1) + tuple(kernel.shape))
    for i in range(max(kh, kw) - 1):
        if i < kh - 1:
            kernel = _block_convolve(kernel, frames[i], 0, side)
        if i < kw - 1:
            kernel = _block_convolve(kernel, frames[kh - 1 + i], 1, side)
    return kernel


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
    r"""Kernel of `conv(conv(x, first, stride 1), second, stride s)` as one stride-s convolution.

    With Keras' cross-correlation and row-vector taps, z[i] = sum_p x[i + p] first[p]
    and y[o] = sum_q z[o s + q] second[q] give y[o] = sum_t x[o s + t] K[t] with
    $K[t] = \sum_{p + q = t} \mathrm{first}[p] \, \mathrm{second}[q]$: a kernel of size
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
    kh2, kw2 = second.shape[:2]
    composed = None
    for a in range(kh2):
        for b in range(kw2):
            term = ops.pad(ops.matmul(first, second[a, b]), ((a, kh2 - 1 - a), (b, kw2 - 1 - b), (0, 0), (0, 0)))
            composed = term if composed is None else composed + term
    return composed


def aoc_kernel(
    squares: ArrayLike, matrices: ArrayLike, bcop_kernel_size: tuple[int, int], strides: tuple[int, int], groups: int
) -> Any:
    """The AOC kernel (Boissin et al., 2025): per group, a square BCOP kernel composed with a strided RKO kernel.

    Args:
        squares: orthonormal stack (groups * (kh + kw - 1), c, c) of the BCOP kernels (c = channels per group).
        matrices: orthonormal (groups, sh * sw * c, c_out / groups) reshaped strided kernels.
        bcop_kernel_size: (kh, kw) of the stride-1 BCOP kernel, k - s + 1.
        strides: (sh, sw).
        groups: number of groups; the output channels of group j are the j-th contiguous block.

    Returns:
        The kernel (k, k, c, c_out) of one (grouped) strided convolution.

    Examples:
        >>> kernel = aoc_kernel(squares, matrices, (2, 2), (2, 2), 1)  # a 3 x 3 kernel for stride 2
    """
    channels = squares.shape[-1]
    per_group = squares.shape[0] // groups
    kernels = []
    for group in range(groups):
        first = bcop_kernel(squares[group * per_group : (group + 1) * per_group], bcop_kernel_size, channels, channels)
        second = rko_strided_kernel(matrices[group], strides, channels)
        kernels.append(compose_conv_kernels(first, second))
    return kernels[0] if groups == 1 else ops.concatenate(kernels, axis=-1)


def clip_and_mask(
    kernel: ArrayLike, input_size: int | tuple[int, int], max_singular_value: float = 1.0, iterations: int = 50
) -> np.ndarray:
    """Sedghi et al.'s projection of a conv kernel: clip the operator's singular values, crop to the support.

    Each iteration takes the kernel's symbol on the n_h x n_w torus (FFT),
    clips every frequency matrix's singular values to `max_singular_value`,
    goes back (inverse FFT, real part) and keeps the kh x kw support. The
    crop undoes part of the clipping: the norm converges to the target from
    above without reaching it. Eager numpy (complex SVDs), called between
    training steps by `SVCMConv2D.project`.

    Args:
        kernel: array (kh, kw, c_in, c_out).
        input_size: (n_h, n_w), at least the kernel size.
        max_singular_value: clipping level.
        iterations: number of clip-and-crop rounds.

    Returns:
        The projected kernel (numpy float64).

    Examples:
        >>> projected = clip_and_mask(kernel, (16, 16), iterations=50)
    """
    kernel = np.asarray(kernel, dtype=np.float64)
    kh, kw = kernel.shape[:2]
    if kh > input_size[0] or kw > input_size[1]:
        raise ValueError(f"input_size {tuple(input_size)} must be at least the kernel size {(kh, kw)}.")
    for _ in range(iterations):
        symbol = np.fft.fft2(kernel, s=tuple(input_size), axes=(0, 1))
        left, values, right = np.linalg.svd(symbol, full_matrices=False)
        symbol = (left * np.minimum(values, max_singular_value)[..., None, :]) @ right
        kernel = np.real(np.fft.ifft2(symbol, axes=(0, 1)))[:kh, :kw]
    return kernel
