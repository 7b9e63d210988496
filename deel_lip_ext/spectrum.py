"""Operator-norm tools for linear maps: they import no layer, so layers can use them.

* `conv_singular_values(kernel, input_size)`: every singular value of a
  circular stride-1 convolution (FFT method of Sedghi, Gupta & Long, 2019).
* `conv_operator_matrix(kernel, input_shape, strides, padding)`: the dense
  matrix of a bias-free convolution, from unit impulses.
* `operator_singular_values(matrix)`: singular values of a dense operator.
* `conv_sv_range(kernel, input_shape, strides, padding)`: exact (min, max)
  singular values of a convolution (certified upper bound for the max on big inputs).
* `dense_sv_range(kernel)`: (min, max) singular values of a matrix.
* `gram_iteration_bound(matrices)`, `conv_gram_bound(kernel, input_size)`: certified upper
  bounds by Gram iteration (Delattre et al., 2023), converging from above.
* `linf_kernel_norm(kernel)`: the l_inf -> l_inf operator norm bound of x -> x W or of a
  convolution with that kernel (largest absolute column sum of the reshaped kernel).
* `padded_axis_counts`, `padded_conv_norm`: an explicitly padded (zero, reflect, symmetric,
  circular) "valid" convolution: how often each input entry is read, and its L2 norm.
* `conv_transpose_norm`, `linf_transposed_kernel_norm`: L2 and l_inf norms of a transposed convolution.
* `strided_conv_norm`, `polyphase_kernel`, `dilated_kernel`: exact norms of strided circular
  convolutions (polyphase FFT), certified bounds for zero-padded ones, dilated kernels.
"""

import math

import keras
import numpy as np
from numpy.typing import ArrayLike

__all__ = [
    "MAX_DENSE_OPERATOR_SIZE",
    "circular_pad_widths",
    "conv_singular_values",
    "conv_operator_matrix",
    "operator_singular_values",
    "conv_sv_range",
    "dense_sv_range",
    "linf_kernel_norm",
    "gram_iteration_bound",
    "conv_gram_bound",
    "pad_index",
    "padded_axis_counts",
    "padded_conv_norm",
    "conv_transpose_norm",
    "linf_transposed_kernel_norm",
    "polyphase_kernel",
    "dilated_kernel",
    "strided_conv_norm",
]


def circular_pad_widths(kernel_size: tuple[int, ...]) -> tuple[tuple[int, int], ...]:
    """((top, bottom), (left, right)) wrap-around pads of a circular conv: k//2 before, k-1-k//2 after.

    Args:
        kernel_size: kernel lengths, one per spatial axis (e.g. (kh, kw)).
    """
    return tuple((k // 2, k - 1 - k // 2) for k in kernel_size)


# Above this many input entries, a conv's dense operator matrix is too big to SVD.
MAX_DENSE_OPERATOR_SIZE = 3072


def conv_singular_values(kernel: ArrayLike, input_size: int | tuple[int, int]) -> np.ndarray:
    """All singular values of the circular, stride-1 convolution with `kernel` on n x n inputs.

    Args:
        kernel: array (kh, kw, c_in, c_out) (Keras layout; cross-correlation
            or convolution give the same singular values).
        input_size: n, or (n_h, n_w).

    Returns:
        A float64 array of n_h*n_w*min(c_in, c_out) singular values (descending per frequency).

    Examples:
        >>> sv = conv_singular_values(layer.effective_kernel(), 28)
        >>> sv.max() <= 1 + 1e-4
    """
    kernel = np.asarray(keras.ops.convert_to_numpy(kernel), dtype=np.float64)
    if kernel.ndim != 4:
        raise ValueError(f"kernel must have 4 dimensions (kh, kw, c_in, c_out), got shape {kernel.shape}.")
    n_h, n_w = (input_size, input_size) if np.isscalar(input_size) else tuple(input_size)
    if kernel.shape[0] > n_h or kernel.shape[1] > n_w:
        # A kernel larger than the image wraps around: fold it onto the torus.
        folded = np.zeros((n_h, n_w) + kernel.shape[2:])
        for a in range(kernel.shape[0]):
            for b in range(kernel.shape[1]):
                folded[a % n_h, b % n_w] += kernel[a, b]
        kernel = folded
    symbols = np.fft.fft2(kernel, s=(n_h, n_w), axes=(0, 1))
    return np.linalg.svd(symbols, compute_uv=False).ravel()


def conv_operator_matrix(
    kernel: ArrayLike, input_shape: tuple[int, int, int], strides: tuple[int, int] = (1, 1), padding: str = "same"
) -> np.ndarray:
    """Dense matrix (in_size, out_size) of a bias-free convolution, built from unit impulses.

    Args:
        kernel: array (kh, kw, c_in, c_out).
        input_shape: (H, W, c_in).
        strides: pair of ints.
        padding: "same", "valid" or "circular".
    """
    kernel = np.asarray(keras.ops.convert_to_numpy(kernel))
    size = int(np.prod(input_shape))
    impulses = np.eye(size, dtype=kernel.dtype).reshape((size,) + tuple(input_shape))
    if padding == "circular":
        widths = ((0, 0),) + circular_pad_widths(kernel.shape[:2]) + ((0, 0),)
        impulses = np.pad(impulses, widths, mode="wrap")
        padding = "valid"
    out = keras.ops.conv(impulses, kernel, strides=tuple(strides), padding=padding)
    return np.asarray(keras.ops.convert_to_numpy(out)).reshape(size, -1)


def operator_singular_values(matrix: ArrayLike) -> np.ndarray:
    """Singular values (descending) of a dense operator matrix, via the smaller Gram matrix.

    Eigenvalues of M M^T (or M^T M) cost far less than an SVD of a very rectangular M (e.g. 784 x 25088 for a conv on
    MNIST); float64 keeps the largest values exact to ~1e-15 relative, the smallest to ~1e-8 absolute.

    Args:
        matrix: 2-D array M, e.g. from `conv_operator_matrix`.

    Returns:
        A float64 array of min(M.shape) values.
    """
    matrix = np.asarray(matrix, dtype=np.float64)
    gram = matrix @ matrix.T if matrix.shape[0] <= matrix.shape[1] else matrix.T @ matrix
    return np.sqrt(np.clip(np.linalg.eigvalsh(gram)[::-1], 0.0, None))


def conv_sv_range(
    kernel: ArrayLike, input_shape: tuple[int | None, int | None, int], strides: tuple[int, int], padding: str
) -> tuple[float, float]:
    """(min, max) singular values of a bias-free conv operator: exact, or a certified max bound on big inputs.

    Args:
        kernel: array (kh, kw, c_in, c_out).
        input_shape: (H, W, c_in) without the batch dimension; H, W may be None (any size: the
            bound ceil(k/s) overlap times the reshaped kernel's norm, valid for every size).
        strides: pair of ints.
        padding: "same", "valid" or "circular".

    Returns:
        (min, max): exact on small inputs and for circular stride-1 convolutions, otherwise
        min is 0 and max a certified upper bound (exact for circular convolutions on sizes
        divisible by the strides).
    """
    height, width, channels = input_shape
    strides = tuple(strides)
    if height is not None and width is not None:
        if padding == "circular" and strides == (1, 1):
            values = conv_singular_values(kernel, (height, width))
            n_values = height * width * min(kernel.shape[2], kernel.shape[3])
            return float(values.min()) if values.size >= n_values else 0.0, float(values.max())
        if height * width * channels <= MAX_DENSE_OPERATOR_SIZE:
            values = operator_singular_values(conv_operator_matrix(kernel, input_shape, strides, padding))
            full_rank = min(height * width * channels, values.size)
            return float(values[:full_rank].min()), float(values.max())
    if height is None or width is None:
        # Any size: each input pixel is in at most ceil(k/s) windows per axis.
        overlap = np.prod([math.ceil(k / s) for k, s in zip(kernel.shape[:2], strides)])
        return 0.0, float(math.sqrt(overlap) * np.linalg.norm(kernel.reshape(-1, kernel.shape[-1]), 2))
    # Large input: the norm of a circular convolution that contains this one; no useful lower bound.
    return 0.0, _containing_circular_conv_norm(kernel, (height, width), strides, padding)


def _containing_circular_conv_norm(kernel, sizes, strides, padding):
    """The norm of a circular strided convolution whose matrix contains the conv's: a certified upper bound.

    A zero-padded ("same" or "valid") conv reads a padded input of at most n + k - 1 entries per
    axis; on a torus of s * ceil((n + k - 1) / s) entries that input does not wrap around, so the
    conv is a sub-matrix of the circular stride-s conv there, whose singular values are those of
    the stride-1 circular conv of its polyphase kernel on the ceil((n + k - 1) / s) torus. A
    circular conv on sizes divisible by the strides is that polyphase conv itself (exact); on
    other sizes it is a row subset of the stride-1 circular conv. For stride 1 this is the
    circular symbol on the (n + k - 1) torus; for stride s it does not count an input entry once
    per overlapping window (the stride-1 symbol did: up to ceil(k / s)^2 times the energy).
    """
    kernel = np.asarray(keras.ops.convert_to_numpy(kernel), dtype=np.float64)
    if padding == "circular" and any(n % s for n, s in zip(sizes, strides)):
        return float(conv_singular_values(kernel, sizes).max())
    if padding == "circular":
        torus = tuple(n // s for n, s in zip(sizes, strides))
    else:
        torus = tuple(-(-(n + k - 1) // s) for n, k, s in zip(sizes, kernel.shape[:2], strides))
    return float(conv_singular_values(polyphase_kernel(kernel, strides), torus).max())


def dense_sv_range(kernel: ArrayLike) -> tuple[float, float]:
    """(min, max) singular values of a matrix (float64 SVD).

    Args:
        kernel: 2-D array or tensor.
    """
    values = np.linalg.svd(np.asarray(keras.ops.convert_to_numpy(kernel), dtype=np.float64), compute_uv=False)
    return float(values.min()), float(values.max())


def linf_kernel_norm(kernel: ArrayLike) -> float:
    """Upper bound of the l_inf -> l_inf norm of x -> x W (W 2-D) or of a convolution with kernel W (4-D).

    Each output entry is a sum of kernel entries times input entries (padding adds zeros or copies), so |y_o| <= sum
    |W[..., o]| * ||x||_inf: the largest absolute column sum of W reshaped to (-1, c_out). Exact for a matrix.

    Args:
        kernel: array or tensor W, (n_in, n_out) or (kh, kw, c_in, c_out).
    """
    kernel = np.abs(np.asarray(keras.ops.convert_to_numpy(kernel), dtype=np.float64))
    return float(np.max(np.sum(kernel.reshape(-1, kernel.shape[-1]), axis=0)))


# ---------------------------------------------------------------------------
# Gram iteration (Delattre et al., ICML 2023; helper M3)
# ---------------------------------------------------------------------------


# Relative margin on Gram-iteration bounds for float64 rounding.
GRAM_ROUNDING_MARGIN = 1e-9


def gram_iteration_bound(matrices: ArrayLike, n_iter: int = 6) -> float:
    r"""Certified upper bound of the largest spectral norm of a batch of matrices, by Gram iteration.

    $G_0 = M$, $G_{t+1} = G_t^H G_t$: $\|M\|_2 = \|G_t\|_2^{1/2^t} \le \|G_t\|_F^{1/2^t}$,
    a bound that decreases to the exact norm as t grows (from above, unlike power iteration). Each step rescales G_t by
    its Frobenius norm (kept in log form) so that nothing overflows.

    Args:
        matrices: array (..., m, n), real or complex.
        n_iter: number of Gram steps (>= 0; 0 gives the Frobenius norm).

    Returns:
        max over the batch of the bound (times 1 + `GRAM_ROUNDING_MARGIN`), a float.
    """
    if isinstance(n_iter, bool) or not isinstance(n_iter, int) or n_iter < 0:
        raise ValueError(f"n_iter must be an integer >= 0, got {n_iter!r}.")
    gram = np.asarray(matrices)
    gram = gram.astype(np.complex128 if np.iscomplexobj(gram) else np.float64)
    gram = gram.reshape((-1,) + gram.shape[-2:])
    log_scale = np.zeros(gram.shape[0])  # log ||M||_2 = log_scale + log ||G_t||_2 / 2^t
    for step in range(n_iter):
        norms = np.linalg.norm(gram, axis=(-2, -1))
        norms = np.where(norms > 0, norms, 1.0)
        gram = gram / norms[:, None, None]
        log_scale += np.log(norms) / 2.0**step
        gram = np.conj(np.swapaxes(gram, -1, -2)) @ gram
    frobenius = np.linalg.norm(gram, axis=(-2, -1))
    with np.errstate(divide="ignore"):
        logs = log_scale + np.log(frobenius) / 2.0**n_iter
    # At convergence the bound meets the norm, where float64 rounding (relative ~ n_iter * size * 1e-16
    # after the 2^t-th root) could put it just below: a relative margin of 1e-9 covers it.
    return float(np.exp(np.max(logs)) * (1.0 + GRAM_ROUNDING_MARGIN))


def conv_gram_bound(kernel: ArrayLike, input_size: int | tuple[int, int], n_iter: int = 6) -> float:
    """Certified upper bound of the L2 norm of a circular stride-1 convolution: Gram iteration per frequency.

    The circular convolution is block-diagonalized by the 2-D FFT (one c_in x c_out symbol per frequency, as in
    `conv_singular_values`); its norm is the largest symbol norm, bounded by `gram_iteration_bound`. A zero-padded
    ("same") convolution on n x n inputs is bounded by the circular one on the (n + k - 1) torus.

    Args:
        kernel: array (kh, kw, c_in, c_out).
        input_size: n, or (n_h, n_w), the torus size.
        n_iter: Gram steps.

    Returns:
        The bound, a float.
    """
    kernel = np.asarray(keras.ops.convert_to_numpy(kernel), dtype=np.float64)
    n_h, n_w = (input_size, input_size) if np.isscalar(input_size) else tuple(input_size)
    if kernel.ndim != 4 or kernel.shape[0] > n_h or kernel.shape[1] > n_w:
        raise ValueError(f"kernel must be (kh, kw, c_in, c_out) with kh <= n_h and kw <= n_w, got {kernel.shape}.")
    return gram_iteration_bound(np.fft.fft2(kernel, s=(n_h, n_w), axes=(0, 1)), n_iter)


# np.pad names of the explicit paddings ("constant" pads zeros).
_NP_PAD_MODES = {"constant": "constant", "reflect": "reflect", "symmetric": "symmetric", "circular": "wrap"}


def _np_pad_mode(mode):
    if mode not in _NP_PAD_MODES:
        raise ValueError(f"mode must be one of {tuple(_NP_PAD_MODES)}, got {mode!r}.")
    return _NP_PAD_MODES[mode]


def pad_index(size: int, before: int, after: int, mode: str) -> np.ndarray:
    """Input index that each position of a padded axis copies (-1 for a zero of "constant" padding).

    Args:
        size: length of the axis.
        before: pad before the first entry.
        after: pad after the last entry.
        mode: "constant", "reflect", "symmetric" or "circular".

    Returns:
        An int array of length `before + size + after`.

    Examples:
        >>> pad_index(4, 2, 1, "reflect")  # array([2, 1, 0, 1, 2, 3, 2])
    """
    np_mode = _np_pad_mode(mode)
    index = np.arange(size)
    if np_mode == "constant":
        return np.pad(index, (before, after), mode="constant", constant_values=-1)
    return np.pad(index, (before, after), mode=np_mode)


def padded_axis_counts(size: int, kernel: int, stride: int, pads: tuple[int, int], mode: str) -> np.ndarray:
    """How many (output window, kernel tap) pairs read each input entry of one axis, padding copies included.

    Args:
        size: input length.
        kernel: kernel length.
        stride: stride of the "valid" convolution run on the padded axis.
        pads: (before, after) pad widths.
        mode: "constant", "reflect", "symmetric" or "circular".

    Returns:
        A numpy int array of length `size`.

    Examples:
        >>> padded_axis_counts(4, 3, 1, (1, 1), "reflect")  # array([2, 4, 4, 2])
    """
    index = pad_index(size, pads[0], pads[1], mode)
    counts = np.zeros(size, dtype=int)
    for start in range(0, len(index) - kernel + 1, stride):
        window = index[start : start + kernel]
        np.add.at(counts, window[window >= 0], 1)
    return counts


def _impulses(input_shape):
    size = int(np.prod(input_shape))
    return size, np.eye(size, dtype="float32").reshape((size,) + tuple(input_shape))


def padded_conv_norm(kernel: ArrayLike, input_shape: tuple, pads: tuple, mode: str, strides: tuple) -> float:
    """L2 norm of x -> valid_conv(pad(x)): exact on small inputs, a proven upper bound otherwise.

    Args:
        kernel: array (kh, kw, c_in, c_out).
        input_shape: (H, W, c_in) of the unpadded input, all known.
        pads: ((top, bottom), (left, right)).
        mode: "constant", "reflect", "symmetric" or "circular".
        strides: pair of ints.

    Returns:
        The largest singular value of the dense operator (from unit impulses) when the input has at
        most `MAX_DENSE_OPERATOR_SIZE` entries; otherwise ||M||_2 sqrt(max count), M the kernel
        reshaped to (kh kw c_in, c_out) and count the number of reads of an input entry
        (`padded_axis_counts`, per axis): ||y||^2 = sum_o ||M^T patch_o||^2 <= ||M||^2 sum_i count_i x_i^2.

    Examples:
        >>> padded_conv_norm(conv.kernel, (8, 8, 3), ((1, 1), (1, 1)), "reflect", (1, 1))
    """
    kernel = np.asarray(keras.ops.convert_to_numpy(kernel), dtype=np.float64)
    np_mode = _np_pad_mode(mode)
    height, width, channels = input_shape
    if height * width * channels <= MAX_DENSE_OPERATOR_SIZE:
        size, impulses = _impulses(input_shape)
        padded = np.pad(impulses, ((0, 0), tuple(pads[0]), tuple(pads[1]), (0, 0)), mode=np_mode)
        out = keras.ops.conv(padded, kernel.astype("float32"), strides=tuple(strides), padding="valid")
        return float(operator_singular_values(np.asarray(keras.ops.convert_to_numpy(out)).reshape(size, -1))[0])
    overlap = 1
    for n, k, s, axis_pads in zip((height, width), kernel.shape[:2], strides, pads):
        overlap *= int(padded_axis_counts(n, k, s, tuple(axis_pads), mode).max(initial=1))
    return float(math.sqrt(overlap) * np.linalg.norm(kernel.reshape(-1, kernel.shape[-1]), 2))


def conv_transpose_norm(
    kernel: ArrayLike,
    input_shape: tuple,
    strides: tuple,
    padding: str,
    output_padding: tuple[int, int] | None = None,
) -> float:
    """L2 norm of a bias-free transposed 2-D convolution: exact on small inputs, a proven upper bound otherwise.

    A transposed convolution T is the adjoint of the strided convolution C with the same kernel
    (kh, kw, filters, c_in) from its output space to its input space, and ||T|| = ||C||. C reads
    each entry at most ceil(k/s) times per axis, so ||T|| <= ||M||_2 sqrt(prod ceil(k/s)), M the
    kernel reshaped to (kh kw filters, c_in), at every input size.

    Args:
        kernel: array (kh, kw, filters, c_in) (Keras's `Conv2DTranspose` layout).
        input_shape: (H, W, c_in); H, W may be None (any size: the bound).
        strides: pair of ints.
        padding: "same" or "valid".
        output_padding: Keras's `output_padding` (None or a pair).

    Returns:
        The largest singular value of the dense operator (from unit impulses) when the input is known
        and has at most `MAX_DENSE_OPERATOR_SIZE` entries, otherwise the bound above.

    Examples:
        >>> conv_transpose_norm(layer.kernel, (7, 7, 16), (2, 2), "same")
    """
    kernel = np.asarray(keras.ops.convert_to_numpy(kernel), dtype=np.float64)
    height, width, channels = input_shape
    if height is not None and width is not None and height * width * channels <= MAX_DENSE_OPERATOR_SIZE:
        size, impulses = _impulses(input_shape)
        out = keras.ops.conv_transpose(
            impulses, kernel.astype("float32"), strides=tuple(strides), padding=padding, output_padding=output_padding
        )
        return float(operator_singular_values(np.asarray(keras.ops.convert_to_numpy(out)).reshape(size, -1))[0])
    overlap = math.prod(math.ceil(k / s) for k, s in zip(kernel.shape[:2], strides))
    return float(math.sqrt(overlap) * np.linalg.norm(kernel.reshape(-1, kernel.shape[-1]), 2))


def linf_transposed_kernel_norm(kernel: ArrayLike, strides: tuple) -> float:
    """Upper bound of the l_inf -> l_inf norm of a transposed 2-D convolution with `kernel` (kh, kw, filters, c_in).

    Output entry (p, f) receives input entry (q, c) through tap t only when t = p + pad - s q, so
    the taps of one output position are those of one residue class t = r (mod s) per axis:
    |y| <= max over r and f of sum |kernel[r_h::s_h, r_w::s_w, f, :]| times ||x||_inf. (The column sum
    of a convolution, `linf_kernel_norm`, sums over the wrong axis here.)

    Args:
        kernel: array (kh, kw, filters, c_in).
        strides: pair of ints.

    Examples:
        >>> linf_transposed_kernel_norm(layer.kernel, (2, 2))
    """
    kernel = np.abs(np.asarray(keras.ops.convert_to_numpy(kernel), dtype=np.float64))
    s_h, s_w = tuple(strides)
    sums = [kernel[r_h::s_h, r_w::s_w].sum(axis=(0, 1, 3)) for r_h in range(s_h) for r_w in range(s_w)]
    return float(max(np.max(values, initial=0.0) for values in sums))


def polyphase_kernel(kernel: np.ndarray, strides: tuple[int, int]) -> np.ndarray:
    """Stride-1 kernel (ceil(kh/sh), ceil(kw/sw), sh * sw * c_in, c_out) of a stride-s conv after a downsampling.

    A circular stride-s convolution on an (s n_h, s n_w) torus equals, up to permutations of its input, the circular
    stride-1 convolution of this kernel on the (n_h, n_w) torus: same singular values.

    Args:
        kernel: array (kh, kw, c_in, c_out).
        strides: `(sh, sw)`.

    Examples:
        >>> polyphase_kernel(np.ones((3, 3, 2, 4)), (2, 2)).shape
        (2, 2, 8, 4)
    """
    (kh, kw, c_in, c_out), (sh, sw) = kernel.shape, strides
    nh, nw = -(-kh // sh), -(-kw // sw)
    padded = np.zeros((nh * sh, nw * sw, c_in, c_out))
    padded[:kh, :kw] = kernel
    return padded.reshape(nh, sh, nw, sw, c_in, c_out).transpose(0, 2, 1, 3, 4, 5).reshape(nh, nw, -1, c_out)


def dilated_kernel(kernel: np.ndarray, dilation: tuple[int, int]) -> np.ndarray:
    """The kernel with d - 1 zero taps between taps: a dilated conv is the plain conv with it.

    Args:
        kernel: array (kh, kw, ...).
        dilation: `(dh, dw)` dilation rates.

    Examples:
        >>> dilated_kernel(np.ones((3, 3, 1, 1)), (2, 2)).shape
        (5, 5, 1, 1)
    """
    kh, kw = kernel.shape[:2]
    expanded = np.zeros(((kh - 1) * dilation[0] + 1, (kw - 1) * dilation[1] + 1) + kernel.shape[2:])
    expanded[:: dilation[0], :: dilation[1]] = kernel
    return expanded


def strided_conv_norm(
    kernel: ArrayLike, input_size: tuple[int | None, int | None], strides: tuple[int, int], padding: str
) -> float:
    """L2 norm of the bias-free conv `ops.conv(x, kernel, strides, padding)` (circular: wrap pad, then valid).

    Exact for circular padding (FFT of the polyphase kernel at the downsampled size; the size must be divisible by the
    stride) and for zero padding on inputs of at most `MAX_DENSE_OPERATOR_SIZE` values (SVD of the dense operator).
    Larger zero-padded inputs and unknown sizes: the certified upper bound of `conv_sv_range` (the polyphase norm of a
    circular conv on a torus that contains the padded input without wrap-around; the size-independent bound).

    Args:
        kernel: (kh, kw, c_in, c_out).
        input_size: (H, W); None for an unknown size.
        strides: (sh, sw).
        padding: "circular", "same" or "valid".

    Returns:
        The norm (or its upper bound) as a float.

    Examples:
        >>> strided_conv_norm(layer.effective_kernel(), (16, 16), (2, 2), "circular")
    """
    kernel = np.asarray(keras.ops.convert_to_numpy(kernel), dtype=np.float64)
    sizes = tuple(input_size)
    if padding == "circular":
        if None in sizes or any(n % s for n, s in zip(sizes, strides)):
            raise ValueError(f"a circular strided conv needs a size divisible by strides {strides}, got {sizes}.")
        return _containing_circular_conv_norm(kernel, sizes, strides, padding)
    return conv_sv_range(kernel, sizes + (kernel.shape[2],), strides, padding)[1]
