import keras
import numpy as np
import pytest
from _backend import input_gradient

from deel_lip_ext import normalizers
from deel_lip_ext.parametrizations import iteration


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
