"""Generic machinery of the parametrizations: normalization, fixed or tolerance loops, power iteration, Björck.

The concrete constraints (`deel_lip_ext.parametrizations.orthogonal`,
`convolution`, `rescaling`) are written with these few functions, as
`torch.nn.utils.parametrizations` builds on `torch.nn.utils.parametrize`:

* `l2_normalize`: x / ||x|| over all entries, or per row of a batch (`axis`).
* `iterate`: `state = body(state)` either exactly `maxiter` times (eps = 0,
  unrolled: what XLA likes best) or until the state moves less than eps
  (deel-lip's semantics: an early-exit loop, frozen fixed-count on JAX).
* `power_iterate`: the power iteration of A^T A for any linear operator A
  given as two callables (a matrix, a batch of matrices, a convolution...),
  without gradient; the caller forms sigma from the returned vector.
* `bjorck`: Björck-Bowie orthonormalization of a matrix or a batch of
  matrices (..., m, n); `gram_side_bjorck_factors` leaves that of a tall
  matrix as two factors, to multiply a batch by them one after the other.
* `gram_matrix`: W^T W, with a gradient that never transposes W.

Defaults are deel-lip's (`DEFAULT_EPS_SPECTRAL`, ...). All of it is `keras.ops`
only (TensorFlow, JAX, PyTorch) and stateless: vectors go in and come out.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from keras import ops
from numpy.typing import ArrayLike

from deel_lip_ext._loops import early_exit_loop, loop_while_moving
from deel_lip_ext._validation import check_int, check_number

__all__ = [
    "DEFAULT_EPS_SPECTRAL",
    "DEFAULT_MAXITER_SPECTRAL",
    "DEFAULT_EPS_BJORCK",
    "DEFAULT_MAXITER_BJORCK",
    "DEFAULT_BETA_BJORCK",
    "check_normalizer_args",
    "l2_normalize",
    "frobenius_distance",
    "iterate",
    "power_iterate",
    "operator_power_iteration",
    "bjorck",
    "gram_matrix",
    "on_gram_side",
    "gram_side_bjorck_factors",
]

DEFAULT_EPS_SPECTRAL = 1e-3
DEFAULT_MAXITER_SPECTRAL = 10
DEFAULT_EPS_BJORCK = 1e-3
DEFAULT_MAXITER_BJORCK = 15
DEFAULT_BETA_BJORCK = 0.5


def check_normalizer_args(
    eps_spectral: float = DEFAULT_EPS_SPECTRAL,
    eps_bjorck: float | None = DEFAULT_EPS_BJORCK,
    beta_bjorck: float = DEFAULT_BETA_BJORCK,
    maxiter_spectral: int = DEFAULT_MAXITER_SPECTRAL,
    maxiter_bjorck: int = DEFAULT_MAXITER_BJORCK,
) -> None:
    """Validate the spectral/Björck hyper-parameters; raise `ValueError` naming the bad one.

    Args:
        eps_spectral: power-iteration tolerance, >= 0 (0: fixed iterations).
        eps_bjorck: Björck tolerance, >= 0 (0: fixed iterations), or None (no Björck).
        beta_bjorck: Björck step, in ]0, 0.5].
        maxiter_spectral: power iterations, an integer >= 1.
        maxiter_bjorck: Björck iterations, an integer >= 1.

    Examples:
        >>> check_normalizer_args(eps_spectral=0.0, maxiter_spectral=3)
    """
    check_number(eps_spectral, "eps_spectral", minimum=0)
    if eps_bjorck is not None:
        try:
            check_number(eps_bjorck, "eps_bjorck", minimum=0)
        except ValueError:
            raise ValueError(
                f"eps_bjorck must be None (no Björck) or a number >= 0 (0 = fixed iterations), got {eps_bjorck!r}."
            ) from None
    if beta_bjorck is None:
        raise ValueError("beta_bjorck must be a number in ]0, 0.5]; to use no Björck iteration pass eps_bjorck=None.")
    check_number(beta_bjorck, "beta_bjorck", minimum=0, maximum=0.5, strict=True)
    check_int(maxiter_spectral, "maxiter_spectral")
    check_int(maxiter_bjorck, "maxiter_bjorck")


def l2_normalize(x: ArrayLike, axis: int | None = None, eps: float = 1e-12) -> Any:
    """`x` divided by its L2 norm over all entries (`axis=None`) or along `axis`; the squared norm is floored at eps.

    Args:
        x: array or tensor.
        axis: axis (or tuple of axes) of the norm; None: all entries.
        eps: floor of the squared norm (keeps a zero `x` finite: it stays 0).

    Returns:
        A tensor of the shape of `x`.

    Examples:
        >>> l2_normalize(keras.ops.ones((2, 3)), axis=-1)  # each row of norm 1
    """
    x = ops.convert_to_tensor(x)  # numpy / a torch tensor would go through numpy's operator
    return x / ops.sqrt(ops.maximum(ops.sum(ops.square(x), axis=axis, keepdims=True), eps))


def frobenius_distance(a: ArrayLike, b: ArrayLike) -> Any:
    """||a - b|| over all entries: the stopping distance of `iterate`.

    Args:
        a: array or tensor.
        b: array or tensor of the shape of `a`.

    Returns:
        A scalar tensor.
    """
    return ops.sqrt(ops.sum(ops.square(a - b)))


def iterate(
    body: Callable[[Any], Any],
    state: Any,
    eps: float,
    maxiter: int,
    distance: Callable[[Any, Any], Any] = frobenius_distance,
) -> Any:
    """Run `state = body(state)` up to `maxiter` times.

    With `eps > 0` stop as soon as `distance(old, new) < eps` (deel-lip's
    semantics; `deel_lip_ext._loops.early_exit_loop` picks the
    form each backend differentiates fastest); with `eps == 0` unroll exactly
    `maxiter` steps.

    Args:
        body: one step, state -> state (a tensor, or any structure of tensors keras' loops accept).
        state: the initial state.
        eps: tolerance on `distance` between two successive states (0: no early exit).
        maxiter: maximal number of `body` calls (with eps > 0, at least one step runs).
        distance: (previous, current) -> scalar tensor; default `frobenius_distance`.

    Returns:
        The last state.

    Examples:
        >>> iterate(lambda x: x / 2.0, keras.ops.ones(()), eps=0.0, maxiter=3)  # 0.125
    """
    if not eps:
        for _ in range(maxiter):
            state = body(state)
        return state

    return early_exit_loop(body, state, eps, maxiter, distance)[0]


def power_iterate(
    apply: Callable[[Any], Any],
    apply_adjoint: Callable[[Any], Any],
    vector: ArrayLike,
    maxiter: int,
    eps: float = 0.0,
    axis: int | None = None,
    normalize_halves: bool = False,
) -> Any:
    """Power iteration of A^T A from `vector`: the normalized vector after `maxiter` steps, without gradient.

    One step is v <- N(A^T A v), or v <- N(A^T N(A v)) with `normalize_halves`
    (the two half-steps of the alternating form u = N(A v), v = N(A^T u)), N
    the `l2_normalize` over all entries or along `axis` (one vector per row of
    a batch). The vector is normalized first. Power iteration converges to the
    top singular vector from below: the sigma it gives is for training, never
    a certificate.

    Args:
        apply: callable v -> A v (on a vector shaped like `vector`).
        apply_adjoint: callable u -> A^T u.
        vector: start vector (warm start); its gradient is stopped.
        maxiter: number of steps (exactly, when eps is 0).
        eps: stop once the vector moves less than eps (0: exactly `maxiter` steps).
        axis: normalize along this axis (None: over all entries).
        normalize_halves: normalize after A as well as after A^T.

    Returns:
        The new vector, gradient stopped.

    Examples:
        >>> w = keras.random.normal((16, 8))
        >>> v = power_iterate(lambda v: v @ keras.ops.transpose(w), lambda u: u @ w, keras.ops.ones((1, 8)), 10)
    """

    def normalize(x):
        return l2_normalize(x, axis)

    def step(v):
        u = apply(v)
        return ops.stop_gradient(normalize(apply_adjoint(normalize(u) if normalize_halves else u)))

    vector = normalize(ops.stop_gradient(ops.convert_to_tensor(vector)))
    return ops.stop_gradient(iterate(step, vector, eps, maxiter))


def operator_power_iteration(
    apply: Callable[[Any], Any],
    apply_adjoint: Callable[[Any], Any],
    u: ArrayLike,
    maxiter: int = 1,
    eps: float = 0.0,
) -> tuple[Any, Any]:
    """Largest singular value of a linear operator A by power iteration on A^T A, from a persistent vector.

    The vector iterates without gradient (`power_iterate`); the returned
    sigma = ||A u|| carries the gradient of A (as in spectral normalization).
    Power iteration converges from below: sigma is an estimate for training,
    never a certificate (certify with the exact norm of the resulting operator).

    Args:
        apply: callable x -> A x (x has the shape of `u`).
        apply_adjoint: callable y -> A^T y.
        u: the previous vector (any shape accepted by `apply`).
        maxiter: number of iterations (>= 0).
        eps: stop once the vector moves less than eps (0: exactly `maxiter` iterations).

    Returns:
        (sigma, new_u).

    Examples:
        >>> sigma, u = operator_power_iteration(lambda x: 2.0 * x, lambda y: 2.0 * y, keras.ops.ones((1, 3)))
    """
    maxiter = check_int(maxiter, "maxiter", minimum=0)
    u = power_iterate(apply, apply_adjoint, u, maxiter, eps)
    sigma = ops.sqrt(ops.sum(ops.square(apply(u))))
    return sigma, u


def bjorck(
    matrices: ArrayLike,
    eps: float = DEFAULT_EPS_BJORCK,
    beta: float = DEFAULT_BETA_BJORCK,
    maxiter: int = DEFAULT_MAXITER_BJORCK,
    divisor: ArrayLike | None = None,
    gram: ArrayLike | None = None,
) -> Any:
    """Björck-Bowie orthonormalization (order 1) of a matrix (m, n) or of every matrix of a batch (..., m, n).

    Iterates `W <- (1 + beta) W - beta W W^T W`. Every singular value s < sqrt(3) moves to
    `1.5 s - 0.5 s^3 <= 1` (beta = 0.5), so after one iteration the largest
    singular value is at most 1 even when the iteration has not converged.

    A matrix at least `GRAM_SIDE_RATIO` times longer than wide (or wider than long) is iterated
    on its small (Gram) side, in rounds of at most `GRAM_SIDE_ITERATIONS` iterations
    (`gram_side_bjorck_factors`; 15 iterations: three rounds of at most 5): within a round every
    iterate is W_r P with P small and square, so a round touches the big matrix twice (its Gram
    matrix, then W_r P) instead of twice per iteration, and the next round starts from the
    materialized W_r P. Same iterates, stopping distances and number of iterations as the
    plain form.

    Args:
        matrices: tensor (..., m, n) with singular values below sqrt(3)
            (e.g. divided by a power-iteration estimate of the largest one).
        eps: stop when `||W_t - W_{t-1}||_F < eps` (over the whole batch); 0
            runs exactly `maxiter` unrolled iterations.
        beta: step, in ]0, 0.5].
        maxiter: maximal number of iterations.
        divisor: optional scalar: orthonormalize `matrices / divisor` (e.g. the spectral norm
            estimate). On the Gram side it goes into the small factor, so the big matrix is
            never divided (one pass fewer each way).
        gram: optional `gram_matrix(matrices)` already computed (e.g. for a power iteration
            on the Gram side); used when the matrices are iterated on their Gram side
            (`on_gram_side(rows, columns)`), ignored otherwise.

    Examples:
        >>> orthonormal = bjorck(keras.random.normal((5, 8, 8)) / 8.0, eps=0.0, maxiter=20)
    """
    matrices = ops.convert_to_tensor(matrices)
    rows, columns = matrices.shape[-2:]
    if rows * GRAM_SIDE_RATIO <= columns:
        return ops.swapaxes(bjorck(ops.swapaxes(matrices, -1, -2), eps, beta, maxiter, divisor), -1, -2)
    if not on_gram_side(rows, columns):
        tall = rows >= columns

        def step(w):
            if tall:
                return (1 + beta) * w - beta * ops.matmul(w, gram_matrix(w))
            return (1 + beta) * w - beta * ops.matmul(ops.matmul(w, ops.swapaxes(w, -1, -2)), w)

        return iterate(step, matrices if divisor is None else matrices / divisor, eps, maxiter)
    return ops.matmul(*gram_side_bjorck_factors(matrices, eps, beta, maxiter, divisor, gram))


def on_gram_side(rows: int, columns: int) -> bool:
    """Whether `bjorck` iterates tall matrices (..., rows, columns) on their small Gram side (rows >= 2 columns).

    Args:
        rows: number of rows of the matrices.
        columns: number of columns of the matrices.

    Examples:
        >>> on_gram_side(1568, 64), on_gram_side(9, 16)  # (True, False)
    """
    return columns * GRAM_SIDE_RATIO <= rows


def gram_side_bjorck_factors(
    matrices: ArrayLike,
    eps: float = DEFAULT_EPS_BJORCK,
    beta: float = DEFAULT_BETA_BJORCK,
    maxiter: int = DEFAULT_MAXITER_BJORCK,
    divisor: ArrayLike | None = None,
    gram: ArrayLike | None = None,
) -> tuple[Any, Any]:
    """`bjorck` of tall matrices (`on_gram_side`) as two factors: the result is `base @ factor`.

    `factor` (..., n, n) is the last round's small factor (with `divisor` in it) and `base` the
    matrix that round started from: `matrices` itself when one round ends the iteration (a kernel
    near its orthogonal initialization), else the result of the round before. A batch X (N, m)
    multiplied as (X base) factor never forms the (m, n) result: N m n + N n^2 multiply-adds
    instead of m n^2 + N m n, and the same saving in the gradient (what `SpectralDense` does in
    training when N < m).

    Args:
        matrices: tensor (..., m, n) with m >= 2 n (`on_gram_side(m, n)`), singular values below
            sqrt(3) once divided by `divisor`.
        eps: stop when `||W_t - W_{t-1}||_F < eps` (0: exactly `maxiter` iterations).
        beta: step, in ]0, 0.5].
        maxiter: maximal number of iterations.
        divisor: optional scalar: orthonormalize `matrices / divisor`.
        gram: optional `gram_matrix(matrices)` already computed.

    Returns:
        `(base, factor)`, tensors (..., m, n) and (..., n, n).

    Examples:
        >>> base, factor = gram_side_bjorck_factors(keras.random.normal((64, 8)) / 16.0, eps=0.0, maxiter=20)
        >>> orthonormal = keras.ops.matmul(base, factor)
    """
    matrices = ops.convert_to_tensor(matrices)
    if not on_gram_side(*matrices.shape[-2:]):
        raise ValueError(
            f"gram_side_bjorck_factors needs matrices at least {GRAM_SIDE_RATIO} times longer than wide, got "
            f"shape {tuple(matrices.shape)}; use bjorck."
        )
    # ceil(maxiter / GRAM_SIDE_ITERATIONS) rounds of equal length, the first one shorter by the remainder
    # (15 iterations: 5, 5, 5): one loop over the rounds after the first (a second loop for a last, shorter
    # round cost 0.1 ms per small kernel, forward and gradient).
    rounds = max(1, -(-maxiter // GRAM_SIDE_ITERATIONS))
    length = -(-maxiter // rounds)
    first = maxiter - (rounds - 1) * length
    factor, moved = _gram_side_factor(matrices, eps, beta, first, divisor=divisor, gram=gram)
    state = (matrices, factor)
    if rounds == 1:
        return state

    def one_round(factors, last_move):
        current = ops.matmul(*factors)  # each round starts from the materialized result of the one before
        following, move = _gram_side_factor(current, eps, beta, length, moved=last_move)
        return (current, following), move

    if not eps:
        for _ in range(rounds - 1):
            state = one_round(state, None)[0]
        return state
    return loop_while_moving(one_round, state, moved, eps, rounds - 1)[0]


# Per iteration, Björck on a tall (m, n) matrix costs 2 m n^2 multiply-adds, on its Gram side 4 n^3
# (plus 2 m n^2 once per round): worth it from m = 2n on; a (8192, 256) dense kernel: 1.07e9 -> 6.7e7.
GRAM_SIDE_RATIO = 2
# The Gram side is exact in exact arithmetic only: G = W_r^T W_r carries float32 rounding E, and P
# grows by up to 1.5 per iteration along the directions of tiny eigenvalues (rounding-negative ones
# explode after about 20 iterations on one Gram side). Each round therefore starts from the
# materialized result of the one before, with the Gram matrix of that result. Largest singular value
# minus 1 measured on float32 matrices of rank n/2 or condition number up to 1e6, (18, 3) to
# (4608, 512), after one round and after 15 and 40 iterations: rounds of 4: 9e-7, of 6: 1.4e-6, of 8:
# 2.9e-6, of 10: 2.5e-4 (40 iterations), of 12: overflow. With the default 15 iterations (rounds of
# 5) the RKO of a kernel near its initialization (2 to 5 iterations) takes one round (two products of
# the big matrix each way), a trained one (6 to 15 iterations) two or three.
GRAM_SIDE_ITERATIONS = 6


@ops.custom_gradient
def gram_matrix(matrices: ArrayLike) -> Any:
    """W^T W of a matrix or of every matrix of a batch (..., m, n), with the gradient W (dG + dG^T).

    That is the product's own gradient, written so that TensorFlow never transposes W: the
    gradient it derives for `matmul(swapaxes(W), W)` transposes the (m, n) matrix back (an extra
    pass over W, and oneDNN's transpose is slow), where this one transposes the small (n, n) dG.

    Examples:
        >>> gram_matrix(keras.ops.eye(3))  # the identity
    """
    matrices = ops.convert_to_tensor(matrices)

    def gradient(*args, upstream=None):
        upstream = args[0] if upstream is None else upstream
        return ops.matmul(matrices, upstream + ops.swapaxes(upstream, -1, -2))

    return ops.matmul(ops.swapaxes(matrices, -1, -2), matrices), gradient


def _gram_side_factor(matrices, eps, beta, maxiter, divisor=None, gram=None, moved=None):
    """Up to `maxiter` `bjorck` iterations of tall matrices W_0 (..., m, n) as W_t = W_0 P_t, P_t (..., n, n).

    With a `divisor` d, W_0 is `matrices / d`: G = M^T M / d^2 and W_t = M (P_t / d). `gram` is
    M^T M if already computed. `moved` is how far the iteration that produced `matrices` moved it
    (None: `matrices` is a start, the first iteration always runs).

    W_{t+1} = W_t ((1 + beta) I - beta W_t^T W_t) gives P_{t+1} = (1 + beta) P_t - beta P_t P_t^T G P_t
    with G = W_0^T W_0, and ||W_{t+1} - W_t||_F^2 = sum(D * G D) with D = P_{t+1} - P_t: the same
    iterates and stopping distances as iterating W itself (up to rounding).

    Returns:
        (P_t, with the divisor: P_t / d; how far the last iteration moved W: the next round goes on from there).
    """
    gram = gram_matrix(matrices) if gram is None else gram
    if divisor is not None:
        gram = gram / ops.square(divisor)

    def step_distance(previous, current):
        difference = current - previous
        return ops.sqrt(ops.maximum(ops.sum(difference * ops.matmul(gram, difference)), 0.0))

    def step(factor):  # P_t -> P_{t+1}
        # P_t is a polynomial in the symmetric G (P_0 = I), so P_t^T = P_t: no transpose (on a small
        # matrix, TensorFlow's oneDNN transpose costs more than the products).
        return (1 + beta) * factor - beta * ops.matmul(factor, ops.matmul(factor, ops.matmul(gram, factor)))

    identity = ops.broadcast_to(ops.eye(matrices.shape[-1], dtype=matrices.dtype), gram.shape)
    if not eps:  # exactly `maxiter` iterations, unrolled
        factor = iterate(step, identity, eps, maxiter)
    else:
        factor, moved = early_exit_loop(step, identity, eps, maxiter, step_distance, moved)
    return (factor if divisor is None else factor / divisor), moved
