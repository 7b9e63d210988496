"""Constraints on matrices: spectral normalization, RKO, Björck stacks, Frobenius, CHORD (deel-lip's names).

A dense kernel is (n_in, n_out) with y = x K; a convolution kernel used here
is seen as its reshaped matrix (kh * kw * c_in, c_out). Orthogonalization runs
in float32, even when the model computes in float16/bfloat16, because Björck
iterations lose orthogonality quickly in low precision.

An `eps` of 0 selects the *fixed-iteration* mode: exactly `maxiter` unrolled
iterations and no data-dependent loop, which is what XLA/`jit_compile` likes best.
"""

from __future__ import annotations

from typing import Any

import keras
from keras import ops
from numpy.typing import ArrayLike

from deel_lip_ext._validation import check_number
from deel_lip_ext.parametrizations.iteration import (
    DEFAULT_BETA_BJORCK,
    DEFAULT_EPS_BJORCK,
    DEFAULT_EPS_SPECTRAL,
    DEFAULT_MAXITER_BJORCK,
    DEFAULT_MAXITER_SPECTRAL,
    bjorck,
    gram_matrix,
    gram_side_bjorck_factors,
    on_gram_side,
    power_iterate,
)

__all__ = [
    "BCOP_BJORCK_ITERATIONS",
    "BCOP_POWER_ITERATIONS",
    "power_iteration",
    "spectral_normalization",
    "bjorck_normalization",
    "reshaped_kernel_orthogonalization",
    "frobenius_normalization",
    "CHORD_MIN_EPS",
    "check_chord_eps",
    "chord_orthogonalization",
    "batched_bjorck",
    "batched_power_iteration",
    "orthonormalize_stack",
]

# The settings of the official BCOP code (LConvNet), in training and at inference.
BCOP_BJORCK_ITERATIONS = 20
BCOP_POWER_ITERATIONS = 10


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

    Examples:
        >>> u, sigma = power_iteration(keras.random.normal((16, 8)), keras.random.normal((1, 8)))
    """
    matrix = ops.convert_to_tensor(matrix)  # numpy input: torch's stop_gradient takes tensors only
    matrix_sg = ops.stop_gradient(matrix)
    u = power_iterate(
        lambda v: ops.matmul(v, ops.transpose(matrix_sg)), lambda z: ops.matmul(z, matrix_sg), u, maxiter, eps
    )
    # ||W u^T||, not ||u W^T||: the gradient of a transposed W would transpose it back (a pass over W).
    sigma = ops.sqrt(ops.sum(ops.square(ops.matmul(matrix, ops.transpose(u)))))
    return u, sigma


def _start(matrix: Any, u: ArrayLike | None) -> Any:
    """The power iteration's start: `u`, or a random normal vector when `u` is None (deel-lip)."""
    return keras.random.normal((1, matrix.shape[-1]), dtype=matrix.dtype) if u is None else u


def _started_power_iteration(matrix: Any, u: ArrayLike | None, eps: float, maxiter: int) -> tuple[Any, Any]:
    """`power_iteration` of a 2-D `matrix` from `u`, or from a random normal vector when `u` is None (deel-lip)."""
    return power_iteration(matrix, _start(matrix, u), maxiter=maxiter, eps=eps)


def _power_iteration_on_gram(gram: Any, start: Any, eps: float, maxiter: int) -> tuple[Any, Any]:
    """`power_iteration` of a matrix M given its Gram matrix G = M^T M (n, n): the same iterates and sigma.

    A step v <- N(v M^T M) is v <- N(v G), and ||M v^T|| = sqrt(v G v^T): nothing touches M,
    and sigma's gradient reaches M through G's (which Björck's Gram side computes anyway).
    """
    gram_sg = ops.stop_gradient(gram)
    u = power_iterate(lambda v: ops.matmul(v, gram_sg), lambda v: v, start, maxiter, eps)
    return u, ops.sqrt(ops.maximum(ops.sum(ops.matmul(u, gram) * u), 0.0))


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
    kernel = ops.convert_to_tensor(kernel)  # numpy / torch tensor goes through numpy's operator
    matrix = ops.reshape(kernel, (-1, kernel.shape[-1]))
    u, sigma = _started_power_iteration(matrix, u, eps, maxiter)
    return kernel / (sigma + eps), u, sigma


def bjorck_normalization(
    w: ArrayLike,
    eps: float = DEFAULT_EPS_BJORCK,
    beta: float = DEFAULT_BETA_BJORCK,
    maxiter: int = DEFAULT_MAXITER_BJORCK,
) -> Any:
    """Björck-Bowie orthonormalization of a 2-D matrix (deel-lip's name of `iteration.bjorck`).

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
    return bjorck(w, eps=eps, beta=beta, maxiter=maxiter)


def reshaped_kernel_orthogonalization(
    kernel: ArrayLike,
    u: ArrayLike,
    adjustment_coef: float = 1.0,
    eps_spectral: float = DEFAULT_EPS_SPECTRAL,
    eps_bjorck: float | None = DEFAULT_EPS_BJORCK,
    beta: float | None = DEFAULT_BETA_BJORCK,
    maxiter_spectral: int = DEFAULT_MAXITER_SPECTRAL,
    maxiter_bjorck: int = DEFAULT_MAXITER_BJORCK,
    as_factors: bool = False,
) -> tuple[Any, Any, Any]:
    """RKO: spectral normalization then Björck on the reshaped kernel.

    The kernel is reshaped to (-1, kernel.shape[-1]), normalized, orthonormalized
    (skipped when `eps_bjorck` or `beta` is None: spectral normalization only,
    as deel-lip), multiplied
    by `adjustment_coef` and reshaped back.

    A tall reshaped kernel (`on_gram_side`) is orthonormalized on its Gram side, where
    the matrix comes out as `base @ factor` (`gram_side_bjorck_factors`); `as_factors`
    returns that pair instead of the kernel, so that a layer multiplying a batch of
    fewer rows than the matrix's by the two in turn never forms it (`SpectralDense`).

    Args:
        kernel: tensor whose last axis is the output axis.
        u: the power-iteration vector (1, kernel.shape[-1]), or None for a random start (deel-lip).
        adjustment_coef: factor applied to the orthonormalized kernel.
        eps_spectral: power-iteration tolerance (0: exactly `maxiter_spectral` steps).
        eps_bjorck: Björck tolerance (0: exactly `maxiter_bjorck` steps; None: no Björck).
        beta: Björck step in ]0, 0.5] (None: no Björck).
        maxiter_spectral: maximal number of power iterations.
        maxiter_bjorck: maximal number of Björck iterations.
        as_factors: return the matrix (-1, kernel.shape[-1]) as `(base, factor)`, `base @ factor`
            (`adjustment_coef` in the factor), or `(matrix, None)` off the Gram side or without
            Björck, in place of the reshaped kernel.

    Returns:
        `(kernel_bar, u, sigma)`, or `((base, factor), u, sigma)` with `as_factors`.

    Examples:
        >>> w_bar, u, sigma = reshaped_kernel_orthogonalization(kernel, u, 1.0 / 3.0)
        >>> (base, factor), u, sigma = reshaped_kernel_orthogonalization(kernel, u, as_factors=True)
    """
    matrix = ops.reshape(kernel, (-1, kernel.shape[-1]))
    factor = None
    if eps_bjorck is None or beta is None:
        matrix, u, sigma = spectral_normalization(matrix, u, eps=eps_spectral, maxiter=maxiter_spectral)
    elif not on_gram_side(*matrix.shape):
        u, sigma = _started_power_iteration(matrix, u, eps_spectral, maxiter_spectral)
        matrix = bjorck(matrix, eps=eps_bjorck, beta=beta, maxiter=maxiter_bjorck, divisor=sigma + eps_spectral)
    else:
        # Björck of M / (sigma + eps), as `spectral_normalization` then `bjorck_normalization`: the division goes
        # into Björck's small factor on the Gram side, where the power iteration runs too (on G = M^T M, computed
        # once for both).
        gram = gram_matrix(matrix)
        u, sigma = _power_iteration_on_gram(gram, _start(matrix, u), eps_spectral, maxiter_spectral)
        matrix, factor = gram_side_bjorck_factors(
            matrix, eps=eps_bjorck, beta=beta, maxiter=maxiter_bjorck, divisor=sigma + eps_spectral, gram=gram
        )
    if not (isinstance(adjustment_coef, (int, float)) and adjustment_coef == 1):  # in the small factor if any
        if factor is None:
            matrix = matrix * adjustment_coef
        else:
            factor = factor * adjustment_coef
    if as_factors:
        return (matrix, factor), u, sigma
    matrix = matrix if factor is None else ops.matmul(matrix, factor)
    return ops.reshape(matrix, kernel.shape), u, sigma


def frobenius_normalization(kernel: ArrayLike, disjoint_neurons: bool = False, eps: float = 1e-12) -> Any:
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


CHORD_MIN_EPS = 2.0**-23  # float32's machine epsilon: a smaller relative ridge rounds away


def check_chord_eps(eps: float) -> float:
    """`eps` as a float if CHORD's float32 Cholesky can use it as a ridge, else a `ValueError` naming the fix.

    Args:
        eps: the ridge (relative to the Gram matrix's mean diagonal when that is > 1).

    Examples:
        >>> check_chord_eps(1e-6)
        1e-06
    """
    eps = check_number(eps, "eps", minimum=0, strict=True)
    if eps < CHORD_MIN_EPS:
        raise ValueError(
            f"eps={eps!r} is below float32's resolution ({CHORD_MIN_EPS:.3g}): CHORD factorizes in float32, "
            "where such a ridge rounds away and a rank-deficient kernel has no Cholesky factor. "
            f"Use eps >= {CHORD_MIN_EPS:.3g} (the default 1e-6 is safe)."
        )
    return eps


def chord_orthogonalization(kernel: ArrayLike, eps: float = 1e-6) -> Any:
    """CHORD: orthonormalize the rows (or columns) of a dense kernel by a Cholesky factorization.

    For the operator P = kernel^T (units x n_in) with units <= n_in:
    G = P P^T + r I = L L^T and P' = L^-1 P, so P' P'^T = I - r L^-1 L^-T:
    every singular value is <= 1 and within r of 1 for a well-conditioned
    kernel. With units > n_in, the columns are orthonormalized instead
    (kernel^T kernel is replaced by the same construction on kernel). The
    ridge is r = eps * max(1, mean(diag(P P^T))): eps itself for a kernel of
    rows of norm <= 1 (an orthogonal initialization), eps relative to the
    rows' scale for a larger kernel, so a rank-deficient kernel keeps a
    defined factorization however large training makes it.

    That holds in exact arithmetic. In float32 the Cholesky factor of an
    ill-conditioned Gram matrix carries relative errors of about its condition
    number times 6e-8: L^-1 P was measured up to 1.008 in norm (kernels of
    condition number 1e3), 1.0018 for a 64 x 64 kernel after three Adam(0.1)
    steps on JAX. One Björck step W <- 1.5 W - 0.5 W W^T W follows: it maps every
    singular value s < sqrt(3) to 1.5 s - 0.5 s^3 <= 1, moves the ones within d
    of 1 by O(d^2) only, and keeps the ridge's shrinking of the small directions
    (s -> 1.5 s at most).

    Args:
        kernel: array (n_in, units), Keras layout (y = x @ kernel).
        eps: ridge added to the Gram matrix, relative to its mean diagonal when that is > 1;
            at least float32's resolution (`CHORD_MIN_EPS`, 2^-23 ~ 1.19e-7), below which the
            ridge rounds away and a rank-deficient kernel has no Cholesky factor.

    Returns:
        The orthogonalized kernel, shape (n_in, units).

    Examples:
        >>> kernel = chord_orthogonalization(keras.random.normal((16, 8)))
    """
    if len(kernel.shape) != 2:
        raise ValueError(f"kernel must be 2-D (n_in, units), got shape {tuple(kernel.shape)}.")
    check_chord_eps(eps)
    n_in, units = kernel.shape
    rows = ops.transpose(kernel) if units <= n_in else kernel
    gram = ops.matmul(rows, ops.transpose(rows))
    ridge = eps * ops.maximum(ops.mean(ops.diagonal(gram)), 1.0)
    gram = gram + ridge * ops.eye(rows.shape[0], dtype=rows.dtype)
    factor = ops.cholesky(gram)
    orthogonal = bjorck(ops.solve_triangular(factor, rows, lower=True), eps=0.0, maxiter=1)
    return ops.transpose(orthogonal) if units <= n_in else orthogonal


def batched_bjorck(matrices: ArrayLike, iterations: int = BCOP_BJORCK_ITERATIONS, beta: float = 0.5) -> Any:
    """The BCOP code's Björck: exactly `iterations` unrolled steps on every matrix of a stack (`iteration.bjorck`).

    Args:
        matrices: tensor (..., m, n), pre-scaled to singular values below sqrt(3).
        iterations: number of unrolled iterations.
        beta: step.

    Examples:
        >>> orthonormal = batched_bjorck(stack / 2.0, iterations=20)
    """
    return bjorck(matrices, eps=0.0, beta=beta, maxiter=iterations)


def batched_power_iteration(
    matrices: ArrayLike, vectors: ArrayLike, iterations: int = BCOP_POWER_ITERATIONS
) -> tuple[Any, Any]:
    """Largest singular values of a stack (b, m, n) by power iteration, without gradient.

    Args:
        matrices: tensor (b, m, n).
        vectors: right singular vector estimates (b, n) (warm start).
        iterations: number of iterations (alternating u = N(M v), v = N(M^T u)).

    Returns:
        `(sigma, vectors)`: estimates (b,) (from below) and the new vectors.

    Examples:
        >>> sigma, vectors = batched_power_iteration(stack, keras.ops.ones((5, 8)))
    """
    matrices = ops.stop_gradient(matrices)

    def apply(v):
        return ops.einsum("bmn,bn->bm", matrices, v)

    def apply_adjoint(u):
        return ops.einsum("bmn,bm->bn", matrices, u)

    v = power_iterate(apply, apply_adjoint, vectors, iterations, axis=-1, normalize_halves=True)
    sigma = ops.sqrt(ops.sum(ops.square(apply(v)), axis=-1))
    return ops.stop_gradient(sigma), v


def orthonormalize_stack(
    matrices: ArrayLike,
    vectors: ArrayLike,
    bjorck_iterations: int = BCOP_BJORCK_ITERATIONS,
    power_iterations: int = BCOP_POWER_ITERATIONS,
    dtype: str = "float32",
) -> tuple[Any, Any]:
    """The BCOP code's orthonormalization of a stack (b, m, n) of raw matrices, in `dtype` (float32).

    Each matrix is divided by its power-iteration estimate of sigma_max (no
    gradient through the scale) and orthonormalized by fixed Björck
    iterations (gradient through every iteration).

    Args:
        matrices: the raw stack (b, m, n).
        vectors: the power-iteration vectors (b, n) (warm start).
        bjorck_iterations: Björck iterations.
        power_iterations: power iterations of the pre-scaling.
        dtype: computation dtype.

    Returns:
        `(orthonormal, vectors)`: the stack with orthonormal columns (rows if
        wide) and the new power-iteration vectors (b, n).

    Examples:
        >>> orthonormal, v = orthonormalize_stack(raw, v)
    """
    matrices = ops.cast(matrices, dtype)
    sigma, vectors = batched_power_iteration(matrices, ops.cast(vectors, dtype), power_iterations)
    scaled = matrices / ops.reshape(ops.maximum(sigma, 1e-12), (-1, 1, 1))
    return batched_bjorck(scaled, bjorck_iterations), vectors
