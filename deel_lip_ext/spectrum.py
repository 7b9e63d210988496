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
]


def circular_pad_widths(kernel_size):
    """((top, bottom), (left, right)) wrap-around pads of a circular conv: k//2 before, k-1-k//2 after."""
    return tuple((k // 2, k - 1 - k // 2) for k in kernel_size)


# Above this many input entries, a conv's dense operator matrix is too big to SVD.
MAX_DENSE_OPERATOR_SIZE = 3072


def conv_singular_values(kernel, input_size):
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


def conv_operator_matrix(kernel, input_shape, strides=(1, 1), padding="same"):
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


def operator_singular_values(matrix):
    """Singular values (descending) of a dense operator matrix, via the smaller Gram matrix.

    Eigenvalues of M M^T (or M^T M) cost far less than an SVD of a very
    rectangular M (e.g. 784 x 25088 for a conv on MNIST); float64 keeps the
    largest values exact to ~1e-15 relative, the smallest to ~1e-8 absolute.
    """
    matrix = np.asarray(matrix, dtype=np.float64)
    gram = matrix @ matrix.T if matrix.shape[0] <= matrix.shape[1] else matrix.T @ matrix
    return np.sqrt(np.clip(np.linalg.eigvalsh(gram)[::-1], 0.0, None))


def conv_sv_range(kernel, input_shape, strides, padding):
    """(min, max) singular values of a bias-free conv operator: exact, or a certified max bound on big inputs.

    Args:
        kernel: array (kh, kw, c_in, c_out).
        input_shape: (H, W, c_in) without the batch dimension; H, W may be None (any size: the
            bound ceil(k/s) overlap times the reshaped kernel's norm, valid for every size).
        strides: pair of ints.
        padding: "same", "valid" or "circular".

    Returns:
        (min, max): exact on small inputs and for circular stride-1 convolutions, otherwise
        min is 0 and max a certified upper bound.
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
    # Large input: a zero-padded conv is a sub-matrix of the circular conv on a
    # torus of size n + k - 1, a strided one a row subset of the stride-1 one,
    # so the circular symbol's largest value bounds it; no useful lower bound.
    size = (height, width) if padding == "circular" else (height + kernel.shape[0] - 1, width + kernel.shape[1] - 1)
    return 0.0, float(conv_singular_values(kernel, size).max())


def dense_sv_range(kernel):
    """(min, max) singular values of a matrix (float64 SVD)."""
    values = np.linalg.svd(np.asarray(keras.ops.convert_to_numpy(kernel), dtype=np.float64), compute_uv=False)
    return float(values.min()), float(values.max())


def linf_kernel_norm(kernel):
    """Upper bound of the l_inf -> l_inf norm of x -> x W (W 2-D) or of a convolution with kernel W (4-D).

    Each output entry is a sum of kernel entries times input entries (padding
    adds zeros or copies), so |y_o| <= sum |W[..., o]| * ||x||_inf: the
    largest absolute column sum of W reshaped to (-1, c_out). Exact for a matrix.
    """
    kernel = np.abs(np.asarray(keras.ops.convert_to_numpy(kernel), dtype=np.float64))
    return float(np.max(np.sum(kernel.reshape(-1, kernel.shape[-1]), axis=0)))


# ---------------------------------------------------------------------------
# Gram iteration (Delattre et al., ICML 2023; helper M3)
# ---------------------------------------------------------------------------


# Relative margin on Gram-iteration bounds for float64 rounding.
GRAM_ROUNDING_MARGIN = 1e-9


def gram_iteration_bound(matrices: ArrayLike, n_iter: int = 6) -> float:
    """Certified upper bound of the largest spectral norm of a batch of matrices, by Gram iteration.

    G_0 = M, G_{t+1} = G_t^H G_t: ||M||_2 = ||G_t||_2^(1 / 2^t) <= ||G_t||_F^(1 / 2^t),
    a bound that decreases to the exact norm as t grows (from above, unlike
    power iteration). Each step rescales G_t by its Frobenius norm (kept in
    log form) so that nothing overflows.

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

    The circular convolution is block-diagonalized by the 2-D FFT (one
    c_in x c_out symbol per frequency, as in `conv_singular_values`); its norm
    is the largest symbol norm, bounded by `gram_iteration_bound`. A
    zero-padded ("same") convolution on n x n inputs is bounded by the circular
    one on the (n + k - 1) torus.

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
