import keras
import numpy as np
import pytest
from _backend import gradients, input_gradient

from deel_lip_ext import _loops, normalizers
from deel_lip_ext.parametrizations import iteration, orthogonal
from deel_lip_ext.parametrizations.rescaling import kernel_self_correlation


def _svd(w):
    return np.linalg.svd(np.asarray(w, dtype=np.float64), compute_uv=False)


@pytest.mark.parametrize("shape", [(15, 32), (32, 15), (64, 64)])
def test_power_iteration_matches_svd(shape):
    w = np.random.default_rng(1).normal(size=shape).astype("float32")
    u = np.random.default_rng(2).normal(size=(1, shape[1])).astype("float32")
    _, sigma = normalizers.power_iteration(w, u, maxiter=200, eps=0.0)
    assert float(sigma) == pytest.approx(_svd(w)[0], rel=1e-3)
    # Power iteration approaches from below: never above the true value.
    assert float(sigma) <= _svd(w)[0] * (1 + 1e-6)


def test_power_iteration_warm_start_converges_across_calls():
    rng = np.random.default_rng(3)
    q1, _ = np.linalg.qr(rng.normal(size=(20, 12)))
    q2, _ = np.linalg.qr(rng.normal(size=(12, 12)))
    w = ((q1 * np.r_[10.0, np.linspace(5.0, 1.0, 11)]) @ q2.T).astype("float32")
    u = np.ones((1, 12), "float32")
    errors = []
    for _ in range(4):
        u, sigma = normalizers.power_iteration(w, u, maxiter=3, eps=0.0)
        errors.append(abs(float(sigma) - _svd(w)[0]))
    assert errors[-1] < errors[0]
    assert errors[-1] < 1e-3 * _svd(w)[0]


@pytest.mark.parametrize("eps", [1e-3, 0.0])
@pytest.mark.parametrize("shape", [(15, 32), (32, 15), (48, 48)])
def test_bjorck_orthonormalizes(shape, eps):
    w = np.random.default_rng(4).normal(size=shape).astype("float32")
    w = w / _svd(w)[0]
    orth = normalizers.bjorck_normalization(w + 0.5 * np.eye(*shape, dtype="float32"), eps=eps, maxiter=40)
    sv = _svd(orth)
    assert sv.max() <= 1 + 1e-5
    assert sv.min() >= 1 - 1e-3


def _ill_conditioned(rows, columns, rank, condition, seed=0):
    rng = np.random.default_rng(seed)
    left, _ = np.linalg.qr(rng.normal(size=(max(rows, columns), min(rows, columns))))
    right, _ = np.linalg.qr(rng.normal(size=(min(rows, columns), min(rows, columns))))
    singular = np.geomspace(1.0, 1.0 / condition, min(rows, columns))
    singular[rank:] = 0.0
    matrix = (left * singular) @ right.T
    return matrix if rows >= columns else matrix.T


@pytest.mark.parametrize("shape", [(300, 40), (40, 300), (3, 90, 20), (64, 31)])
@pytest.mark.parametrize("eps, maxiter", [(0.0, 3), (0.0, 9), (1e-3, 15), (1e-6, 30)])
def test_bjorck_on_the_gram_side_gives_the_plain_iterates(shape, eps, maxiter, monkeypatch, float64):
    # Long thin matrices start on their small (Gram) side: the same iterates, stopping distances and
    # iteration counts as iterating the matrix itself (GRAM_SIDE_RATIO past any shape), in float64.
    w = np.random.default_rng(4).normal(size=shape)
    w = 0.99 * w / _svd(w.reshape(-1, shape[-1]) if len(shape) == 2 else w[0])[0]
    gram_side = keras.ops.convert_to_numpy(iteration.bjorck(w, eps=eps, maxiter=maxiter))
    monkeypatch.setattr(iteration, "GRAM_SIDE_RATIO", 10**9)
    plain = keras.ops.convert_to_numpy(iteration.bjorck(w, eps=eps, maxiter=maxiter))
    np.testing.assert_allclose(gram_side, plain, rtol=0, atol=1e-12)


@pytest.mark.parametrize("step", [2, 5, 6, 10, 11, 12])
@pytest.mark.parametrize("margin", [0.9, 1.1])
def test_bjorck_on_the_gram_side_stops_where_the_plain_form_stops(step, margin, float64):
    # eps just above or below the move of one iteration (numpy's plain iterates): the library must stop
    # right after that iteration or right after the next one, inside a Gram-side round or at its end
    # (maxiter 15: three rounds of 5, iterations 5 and 10 end one, 6 and 11 start the next). With
    # beta = 0.35 from singular values in [0.4, 0.99] every move is at most 0.81 times the one before
    # (so eps between two moves stops between them) and the 13th still moves by 7.7e-6.
    beta = 0.35
    w = np.random.default_rng(5).normal(size=(200, 30))
    w = 0.99 * w / _svd(w)[0]
    iterates = [w]
    for _ in range(step + 1):
        iterates.append((1 + beta) * iterates[-1] - beta * iterates[-1] @ iterates[-1].T @ iterates[-1])
    move = np.linalg.norm(iterates[step] - iterates[step - 1])
    stop = step if margin > 1 else step + 1
    result = keras.ops.convert_to_numpy(iteration.bjorck(w, eps=margin * move, beta=beta, maxiter=15))
    np.testing.assert_allclose(result, iterates[stop], rtol=0, atol=1e-12)


@pytest.mark.parametrize(
    "rows, columns, rank, condition",
    [(8192, 256, 128, 1.0), (576, 64, 64, 1e4), (18, 3, 2, 1.0), (40, 1152, 1, 1.0), (576, 64, 32, 10.0)],
)
@pytest.mark.parametrize("eps, maxiter", [(0.0, 4), (0.0, 40), (0.0, 60), (1e-3, 15)])
def test_bjorck_of_rank_deficient_float32_matrices_stays_at_most_one(rows, columns, rank, condition, eps, maxiter):
    # The Gram side carries float32 rounding of W^T W: along null or tiny directions its factor grows
    # 1.5x per iteration, and from about 20 iterations a rounding-negative eigenvalue explodes it. The
    # Gram-side iterations are capped so the result stays finite and at most 1 to float32 precision.
    w = _ill_conditioned(rows, columns, rank, condition).astype("float32")
    orthonormalized = keras.ops.convert_to_numpy(normalizers.bjorck_normalization(w, eps=eps, maxiter=maxiter))
    assert np.all(np.isfinite(orthonormalized))
    assert _svd(orthonormalized)[0] <= 1 + 1e-5


def test_bjorck_largest_singular_value_never_above_one_when_unconverged():
    # An ill-conditioned matrix: one iteration is far from orthogonal, yet s_max <= 1.
    rng = np.random.default_rng(5)
    q1, _ = np.linalg.qr(rng.normal(size=(30, 30)))
    q2, _ = np.linalg.qr(rng.normal(size=(30, 30)))
    w = (q1 * np.geomspace(1.5, 1e-3, 30)) @ q2.T
    for iterations in (1, 2, 5):
        sv = _svd(normalizers.bjorck_normalization(w.astype("float32"), eps=0.0, maxiter=iterations))
        assert sv.max() <= 1 + 1e-6
        assert sv.min() < 0.5  # not converged: the bound holds anyway


def test_rko_spectral_only_and_shapes():
    kernel = np.random.default_rng(6).normal(size=(3, 3, 4, 8)).astype("float32")
    u = np.ones((1, 8), "float32")
    bar, u_new, sigma = normalizers.reshaped_kernel_orthogonalization(kernel, u, adjustment_coef=0.5)
    assert tuple(bar.shape) == kernel.shape and tuple(u_new.shape) == (1, 8)
    np.testing.assert_allclose(_svd(np.reshape(bar, (-1, 8))), 0.5, atol=1e-3)
    spec, _, _ = normalizers.reshaped_kernel_orthogonalization(kernel, u, eps_bjorck=None, maxiter_spectral=100)
    sv = _svd(np.reshape(spec, (-1, 8)))
    assert sv.max() == pytest.approx(1.0, abs=2e-3)
    assert sv.min() < 0.9  # spectral normalization alone does not orthogonalize


@pytest.mark.parametrize("disjoint", [True, False])
def test_frobenius_normalization(disjoint):
    kernel = np.random.default_rng(7).normal(size=(10, 4)).astype("float32")
    bar = np.asarray(normalizers.frobenius_normalization(kernel, disjoint))
    if disjoint:
        np.testing.assert_allclose(np.linalg.norm(bar, axis=0), 1.0, rtol=1e-6)
    else:
        assert np.linalg.norm(bar) == pytest.approx(1.0, rel=1e-6)


def test_gradient_flows_through_rko():
    w = np.random.default_rng(8).normal(size=(12, 6)).astype("float32")

    def loss(kernel):
        bar, _, _ = normalizers.reshaped_kernel_orthogonalization(kernel, keras.ops.ones((1, 6)))
        return keras.ops.sum(bar[:, 0] * keras.ops.arange(12, dtype="float32"))

    grad = input_gradient(loss, w)
    assert grad is not None and np.all(np.isfinite(grad)) and np.abs(grad).max() > 0


@pytest.mark.parametrize(
    "kwargs, name",
    [
        ({"eps_spectral": -1}, "eps_spectral"),
        ({"eps_bjorck": -1e-3}, "eps_bjorck"),
        ({"beta_bjorck": 0.7}, "beta_bjorck"),
        ({"beta_bjorck": 0}, "beta_bjorck"),
        ({"maxiter_spectral": 0}, "maxiter_spectral"),
        ({"maxiter_bjorck": 2.5}, "maxiter_bjorck"),
    ],
)
def test_bad_normalizer_arguments(kwargs, name):
    with pytest.raises(ValueError, match=name):
        normalizers.check_normalizer_args(**kwargs)


@pytest.mark.parametrize("eps, unrolled_steps", [(1e-30, 5), (1e9, 1)])
def test_tolerance_loop_has_the_values_and_gradients_of_the_unrolled_loop(eps, unrolled_steps):
    # eps 1e-30 never converges (all 5 steps run), 1e9 converges after the first: the tolerance loop
    # must then give the values and input gradients of exactly that many unrolled steps, on every
    # backend (JAX cannot reverse-differentiate a while_loop: the loop is a fixed count that freezes).
    w = np.random.default_rng(0).normal(size=(7, 4)).astype("float32") / 4.0
    weights = np.arange(28, dtype="float32").reshape(7, 4)

    def orthonormalized(eps_bjorck, maxiter):
        return lambda x: normalizers.bjorck_normalization(x, eps=eps_bjorck, maxiter=maxiter)

    for fn, reference in (
        (orthonormalized(eps, 5), orthonormalized(0.0, unrolled_steps)),
        (lambda x: iteration.iterate(lambda s: s * 0.5 + 1.0, x, eps, 5), lambda x: _halve_plus_one(x, unrolled_steps)),
    ):
        np.testing.assert_allclose(_numpy(fn(w)), _numpy(reference(w)), rtol=1e-6, atol=1e-6)
        np.testing.assert_allclose(
            input_gradient(fn, w, weights), input_gradient(reference, w, weights), rtol=1e-5, atol=1e-5
        )


def _halve_plus_one(x, steps):
    for _ in range(steps):
        x = x * 0.5 + 1.0
    return x


def _numpy(tensor):
    return keras.ops.convert_to_numpy(tensor)


_RNG = np.random.default_rng(3)
_MATRIX = (_RNG.normal(size=(6, 4)) / 4).astype("float32")
_VECTOR = _RNG.normal(size=(1, 4)).astype("float32")
_CONV = (_RNG.normal(size=(3, 3, 2, 2)) / 4).astype("float32")


@pytest.mark.parametrize(
    "name, args",
    [
        ("power_iteration", (_MATRIX, _VECTOR)),
        ("spectral_normalization", (_MATRIX, _VECTOR)),
        ("bjorck_normalization", (_MATRIX,)),
        ("reshaped_kernel_orthogonalization", (_MATRIX, _VECTOR)),
        ("frobenius_normalization", (_MATRIX,)),
        ("chord_orthogonalization", (_MATRIX,)),
        ("spectral_normalization_conv", (_CONV, _RNG.normal(size=(1, 4, 4, 2)).astype("float32"))),
        ("aol_rescaling", (_MATRIX,)),
        ("kernel_self_correlation", (_CONV,)),
        ("compose_conv_kernels", (_CONV, _CONV)),
    ],
)
def test_public_functions_accept_numpy_arrays(name, args):
    # numpy operands meet backend tensors through numpy's operators on torch unless converted first.
    function = getattr(normalizers, name)
    from_numpy = function(*args)
    from_tensors = function(*[keras.ops.convert_to_tensor(a) for a in args])
    for a, b in zip(keras.tree.flatten(from_numpy), keras.tree.flatten(from_tensors)):
        np.testing.assert_allclose(_numpy(a), _numpy(b), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("c_in, c_out", [(1, 8), (1, 1), (2, 3)])
def test_kernel_self_correlation_value_and_gradient(c_in, c_out):
    # M[c1, u, v, c2] = sum_{a, b, o} K[a + u - kh + 1, b + v - kw + 1, c1, o] K[a, b, c2, o]. One input
    # channel takes its own path (PyTorch's CPU convolution refused to differentiate it).
    kernel = np.random.default_rng(c_in * 10 + c_out).normal(size=(3, 2, c_in, c_out)).astype("float32")
    padded = np.pad(kernel.astype(np.float64), ((2, 2), (1, 1), (0, 0), (0, 0)))
    expected = np.zeros((c_in, 5, 3, c_in))
    for u in range(5):
        for v in range(3):
            shifted = padded[u : u + 3, v : v + 2]  # K[a + u - 2, b + v - 1]
            expected[:, u, v, :] = np.einsum("abio,abjo->ij", shifted, kernel.astype(np.float64))
    got = keras.ops.convert_to_numpy(kernel_self_correlation(keras.ops.convert_to_tensor(kernel)))
    np.testing.assert_allclose(got, expected, atol=1e-5)
    (gradient,) = gradients(kernel_self_correlation, kernel)
    # sum(M) = sum_o S_o^2 with S_o the sum of K[..., o] over taps and input channels: d/dK[a, b, c, o] = 2 S_o.
    totals = kernel.astype(np.float64).sum(axis=(0, 1, 2), keepdims=True)
    np.testing.assert_allclose(gradient, np.broadcast_to(2 * totals, kernel.shape), rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("shape", [(7, 3), (2, 7, 3), (3, 5)])
def test_gram_matrix_value_and_gradient_are_the_products(shape):
    # The custom gradient W (dG + dG^T) must be the gradient of W^T W, for any (non-symmetric) upstream.
    rng = np.random.default_rng(7)
    w = rng.normal(size=shape).astype("float32")
    upstream = rng.normal(size=shape[:-2] + (shape[-1], shape[-1])).astype("float32")

    def product(x):
        return keras.ops.matmul(keras.ops.swapaxes(x, -1, -2), x)

    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(iteration.gram_matrix(w)), keras.ops.convert_to_numpy(product(w)), rtol=1e-6
    )
    expected = input_gradient(product, w, upstream)
    np.testing.assert_allclose(input_gradient(iteration.gram_matrix, w, upstream), expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("shape", [(300, 40), (40, 300), (48, 48), (2, 90, 20)])
@pytest.mark.parametrize("eps, maxiter", [(0.0, 3), (1e-3, 15)])
def test_bjorck_with_a_divisor_is_bjorck_of_the_divided_matrix(shape, eps, maxiter):
    # On the Gram side the divisor goes into the small factor: the values and the gradients with
    # respect to the matrix and to the divisor (sigma carries a gradient in the RKO) stay the same.
    rng = np.random.default_rng(8)
    w = rng.normal(size=shape).astype("float32")
    divisor = np.asarray([1.01 * _svd(w.reshape(-1, shape[-1]) if len(shape) == 2 else w[0])[0]], "float32")
    upstream = rng.normal(size=shape).astype("float32")

    def with_divisor(x, d):
        return iteration.bjorck(x, eps=eps, maxiter=maxiter, divisor=d[0])

    def divided_first(x, d):
        return iteration.bjorck(x / d[0], eps=eps, maxiter=maxiter)

    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(with_divisor(w, divisor)),
        keras.ops.convert_to_numpy(divided_first(w, divisor)),
        rtol=0,
        atol=2e-6,
    )
    (got_w, got_d), (expected_w, expected_d) = (
        gradients(function, w, divisor, upstream=upstream) for function in (with_divisor, divided_first)
    )
    np.testing.assert_allclose(got_w, expected_w, rtol=0, atol=1e-5 * np.abs(expected_w).max())
    # d/dd of f(W / d) is -<grad_W, W> / d: a sum that cancels (near 0 once converged), so its
    # rounding scale is that of the sum of the absolute terms.
    np.testing.assert_allclose(got_d, expected_d, rtol=0, atol=1e-5 * np.abs(expected_w * w).sum() / divisor[0])


@pytest.mark.parametrize("shape, adjustment_coef", [((3, 3, 4, 8), 0.5), ((300, 16), 1.0), ((300, 16), 0.7)])
@pytest.mark.parametrize("eps_bjorck", [1e-3, None])
def test_rko_is_spectral_normalization_then_bjorck(shape, adjustment_coef, eps_bjorck):
    # reshaped_kernel_orthogonalization folds the division by sigma into Björck (and skips a factor of 1):
    # the kernel and its gradient are those of the three steps in a row.
    rng = np.random.default_rng(9)
    kernel = rng.normal(size=shape).astype("float32")
    u = rng.normal(size=(1, shape[-1])).astype("float32")
    upstream = rng.normal(size=shape).astype("float32")

    def folded(x):
        return normalizers.reshaped_kernel_orthogonalization(x, u, adjustment_coef, eps_bjorck=eps_bjorck)[0]

    def in_a_row(x):
        matrix = keras.ops.reshape(x, (-1, shape[-1]))
        matrix, _, _ = normalizers.spectral_normalization(matrix, u)
        if eps_bjorck is not None:
            matrix = normalizers.bjorck_normalization(matrix, eps=eps_bjorck)
        return keras.ops.reshape(matrix * adjustment_coef, shape)

    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(folded(kernel)), keras.ops.convert_to_numpy(in_a_row(kernel)), rtol=0, atol=2e-6
    )
    # On the Gram side (a (300, 16) matrix) the power iteration runs on W^T W: same vector and sigma.
    _, folded_u, folded_sigma = normalizers.reshaped_kernel_orthogonalization(kernel, u, eps_bjorck=eps_bjorck)
    _, in_a_row_u, in_a_row_sigma = normalizers.spectral_normalization(np.reshape(kernel, (-1, shape[-1])), u)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(folded_u), keras.ops.convert_to_numpy(in_a_row_u), atol=1e-6)
    assert float(folded_sigma) == pytest.approx(float(in_a_row_sigma), rel=1e-6)
    expected = input_gradient(in_a_row, kernel, upstream)
    np.testing.assert_allclose(
        input_gradient(folded, kernel, upstream), expected, rtol=0, atol=1e-5 * np.abs(expected).max()
    )


@pytest.mark.parametrize(
    "moved, maxiter, expected_state, expected_move",
    [(0.1, 10, 1.0, 0.1), (1.0, 10, 0.25, 0.25), (1.0, 1, 0.5, 0.5), (1.0, 0, 1.0, 1.0)],
)
def test_early_exit_loop_goes_on_from_the_last_move(moved, maxiter, expected_state, expected_move):
    # Halving from 1 moves by 0.5, then 0.25 (< eps = 0.3: stop); a last move below eps runs no step.
    state, move = _loops.early_exit_loop(
        lambda x: x / 2.0, keras.ops.ones(()), 0.3, maxiter, lambda a, b: keras.ops.abs(a - b), moved
    )
    assert float(state) == expected_state and float(move) == pytest.approx(expected_move)


def test_loop_while_moving_stops_on_the_move_each_step_reports():
    # Each step halves the state and reports a move of 4x the new state (a round measuring its own last
    # iteration): 1 -> 0.5 (reports 2) -> 0.25 (1) -> 0.125 (0.5 < eps = 0.6: stop), within maxiter 10.
    state, move = _loops.loop_while_moving(
        lambda x, _: (x / 2.0, 2.0 * x), keras.ops.ones(()), keras.ops.ones(()), 0.6, 10
    )
    assert float(state) == 0.125 and float(move) == 0.5


@pytest.mark.parametrize("smallest, rounds_after_the_first", [(0.97, 0), (0.2, 1)])
def test_gram_side_factors_multiply_the_matrix_itself_when_one_round_ends_the_iteration(
    smallest, rounds_after_the_first
):
    # bjorck of a tall matrix is base @ factor. With singular values in [0.97, 1] the first round (5 of the
    # 15 iterations) converges and base is the matrix itself, never formed again; from 0.2 it takes more
    # iterations, and base is the materialized result of the round before the last.
    w = _ill_conditioned(300, 40, 40, 1.0 / smallest, seed=11).astype("float32")
    base, factor = iteration.gram_side_bjorck_factors(w, eps=1e-3, maxiter=15)
    base, factor = keras.ops.convert_to_numpy(base), keras.ops.convert_to_numpy(factor)
    assert factor.shape == (40, 40)
    assert np.array_equal(base, w) == (rounds_after_the_first == 0)
    expected = keras.ops.convert_to_numpy(iteration.bjorck(w, eps=1e-3, maxiter=15))
    np.testing.assert_allclose(base @ factor, expected, rtol=0, atol=2e-6)
    assert _svd(base @ factor)[-1] > 0.999  # converged either way


def test_gram_side_factors_refuse_matrices_not_on_the_gram_side():
    with pytest.raises(ValueError, match="at least 2 times longer than wide"):
        iteration.gram_side_bjorck_factors(np.ones((30, 20), "float32"))


@pytest.mark.parametrize(
    "shape, eps_bjorck, factored",
    [((300, 16), 1e-3, True), ((3, 3, 4, 8), 1e-3, True), ((20, 16), 1e-3, False), ((300, 16), None, False)],
)
def test_rko_factors_multiply_to_the_rko_kernel(shape, eps_bjorck, factored):
    rng = np.random.default_rng(12)
    kernel = rng.normal(size=shape).astype("float32")
    u = rng.normal(size=(1, shape[-1])).astype("float32")
    (base, factor), factors_u, _ = orthogonal.reshaped_kernel_orthogonalization(
        kernel, u, 0.7, eps_bjorck=eps_bjorck, as_factors=True
    )
    expected, expected_u, _ = normalizers.reshaped_kernel_orthogonalization(kernel, u, 0.7, eps_bjorck=eps_bjorck)
    assert (factor is not None) == factored
    matrix = keras.ops.convert_to_numpy(base if factor is None else keras.ops.matmul(base, factor))
    np.testing.assert_allclose(matrix, keras.ops.convert_to_numpy(expected).reshape(-1, shape[-1]), rtol=0, atol=1e-6)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(factors_u), keras.ops.convert_to_numpy(expected_u), atol=0)
