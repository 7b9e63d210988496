"""Scaled average / L2-norm pooling (local and global) against numpy, exact Lipschitz checks, errors."""

import math

import keras
import numpy as np
import pytest
from _backend import batch_jacobian, float_eps, gradient_of_weighted_gradient, input_gradient

from deel_lip_ext.layers import (
    ScaledAveragePooling2D,
    ScaledGlobalAveragePooling2D,
    ScaledGlobalL2NormPooling2D,
    ScaledL2NormPooling,
    ScaledL2NormPooling2D,
)
from deel_lip_ext.layers import pooling


def _numpy(tensor):
    return keras.ops.convert_to_numpy(tensor)


def _random(shape, seed=0, dtype="float32"):
    return np.random.default_rng(seed).normal(size=shape).astype(dtype)


def _windows(x, pool_size):
    """(N, H//ph, W//pw, C, ph*pw): the non-overlapping windows, trailing rows/columns dropped."""
    ph, pw = pool_size
    n, h, w, c = x.shape
    x = x[:, : h // ph * ph, : w // pw * pw]
    blocks = x.reshape(n, h // ph, ph, w // pw, pw, c).transpose(0, 1, 3, 5, 2, 4)
    return blocks.reshape(n, h // ph, w // pw, c, ph * pw)


def _smooth_norm_reference(values, axis, eps):
    return np.sqrt(np.sum(values.astype("float64") ** 2, axis=axis) + eps**2) - eps


POOL_SIZES = [(2, 2), (3, 2), 3]


def _pair(pool_size):
    return (pool_size, pool_size) if isinstance(pool_size, int) else pool_size


@pytest.mark.parametrize("pool_size", POOL_SIZES)
@pytest.mark.parametrize("k", [1.0, 2.5])
def test_scaled_average_pooling_matches_numpy(pool_size, k):
    x = _random((2, 7, 6, 3))
    ph, pw = _pair(pool_size)
    expected = k * _windows(x, (ph, pw)).astype("float64").sum(-1) / math.sqrt(ph * pw)
    layer = ScaledAveragePooling2D(pool_size, k_coef_lip=k)
    np.testing.assert_allclose(_numpy(layer(x)), expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("pool_size", POOL_SIZES)
@pytest.mark.parametrize("k", [1.0, 2.5])
@pytest.mark.parametrize("eps", [1e-6, 0.1])
def test_scaled_l2_norm_pooling_matches_numpy(pool_size, k, eps):
    x = _random((2, 7, 6, 3))
    expected = k * _smooth_norm_reference(_windows(x, _pair(pool_size)), -1, eps)
    layer = ScaledL2NormPooling2D(pool_size, k_coef_lip=k, eps_grad_sqrt=eps)
    np.testing.assert_allclose(_numpy(layer(x)), expected, rtol=1e-5, atol=1e-6)


def test_l2_norm_pooling_is_within_eps_of_the_norm():
    x = _random((2, 4, 4, 3))
    x[0, :2, :2, 0] = 0.0
    exact_norms = np.linalg.norm(_windows(x, (2, 2)).astype("float64"), axis=-1)
    smoothed = _numpy(ScaledL2NormPooling2D(eps_grad_sqrt=1e-3)(x))
    assert np.all(np.abs(smoothed - exact_norms) <= 1e-3 + 1e-6)
    assert smoothed[0, 0, 0, 0] == 0.0


@pytest.mark.parametrize("k", [1.0, 0.5])
def test_global_pooling_matches_numpy(k):
    x = _random((3, 5, 4, 6))
    flat = x.reshape(3, 20, 6)
    np.testing.assert_allclose(
        _numpy(ScaledGlobalAveragePooling2D(k_coef_lip=k)(x)), k * flat.sum(1) / math.sqrt(20), rtol=1e-5, atol=1e-6
    )
    np.testing.assert_allclose(
        _numpy(ScaledGlobalL2NormPooling2D(k_coef_lip=k)(x)),
        k * _smooth_norm_reference(flat, 1, 1e-6),
        rtol=1e-5,
        atol=1e-6,
    )


LAYERS = {
    "average": lambda **kw: ScaledAveragePooling2D((2, 3), **kw),
    "l2": lambda **kw: ScaledL2NormPooling2D((2, 3), **kw),
    "global_average": ScaledGlobalAveragePooling2D,
    "global_l2": ScaledGlobalL2NormPooling2D,
}


@pytest.mark.parametrize("name", sorted(LAYERS))
@pytest.mark.parametrize("k", [1.0, 3.0])
def test_k_lipschitz_on_random_and_scaled_pairs(name, k):
    layer = LAYERS[name](k_coef_lip=k, dtype="float64")
    x = _random((16, 4, 6, 3), seed=1, dtype="float64")
    # Scaled copies are the worst case of a norm: ||f(x) - f(cx)|| = |1 - c| ||f(x)||.
    for y in (_random((16, 4, 6, 3), seed=2, dtype="float64"), 1.7 * x, x + 1e-4 * _random(x.shape, 3, "float64")):
        out_x = _numpy(layer(x))
        out_dist = np.linalg.norm((out_x - _numpy(layer(y))).reshape(16, -1), axis=1)
        in_dist = np.linalg.norm((x - y).reshape(16, -1), axis=1)
        # Below float64, rounding x, y, f(x), f(y) moves the ratio by up to 4 eps (|x| + |y|) / |x - y|.
        sizes = np.linalg.norm(x.reshape(16, -1), axis=1) + np.linalg.norm(y.reshape(16, -1), axis=1)
        slack = 4 * float_eps(out_x) * sizes / in_dist
        assert np.all(out_dist <= k * in_dist * (1 + 1e-6 + slack)), (out_dist / in_dist).max()


def _jacobian_singular_values(layer, x):
    jacobian = batch_jacobian(layer, x)
    return np.linalg.svd(jacobian.astype("float64"), compute_uv=False)


@pytest.mark.parametrize("name", sorted(LAYERS))
@pytest.mark.parametrize("k", [1.0, 2.0])
def test_jacobian_spectral_norm_is_k(name, k):
    singular_values = _jacobian_singular_values(LAYERS[name](k_coef_lip=k), _random((3, 4, 6, 2)))
    assert np.all(singular_values.max(axis=1) <= k * (1 + 1e-6))
    # Nonzero windows give singular values k (up to eps / ||window|| for the L2 layers): the bound is tight.
    np.testing.assert_allclose(singular_values, k, rtol=1e-5)


@pytest.mark.parametrize("make", [ScaledL2NormPooling2D, ScaledGlobalL2NormPooling2D])
def test_l2_gradient_at_zero_is_finite(make):
    x = np.zeros((2, 4, 4, 3), "float32")
    gradient = input_gradient(make(), x)
    assert np.all(np.isfinite(gradient))
    np.testing.assert_array_equal(gradient, 0.0)
    # Without the smoothing the plain square root has no gradient at 0: the eps is what fixes it.
    assert not np.all(np.isfinite(input_gradient(make(eps_grad_sqrt=0.0), x)))


@pytest.mark.parametrize("pool_size", POOL_SIZES)
@pytest.mark.parametrize("k", [1.0, 2.5])
def test_l2_norm_pooling_gradient_is_the_analytic_one(pool_size, k):
    # d/dx of k (sqrt(sum_window x^2 + eps^2) - eps) is k x / sqrt(sum_window x^2 + eps^2) times the
    # window's upstream value; rows and columns past the last whole window get none.
    eps, (ph, pw) = 0.3, _pair(pool_size)
    x = _random((3, 7, 8, 5))
    layer = ScaledL2NormPooling2D(pool_size, k_coef_lip=k, eps_grad_sqrt=eps)
    upstream = _random(layer.compute_output_shape(x.shape), seed=4)
    rows, columns = 7 // ph * ph, 8 // pw * pw
    window_norms = np.sqrt(np.sum(_windows(x.astype("float64"), (ph, pw)) ** 2, axis=-1) + eps**2)
    spread = np.repeat(np.repeat(k * upstream / window_norms, ph, axis=1), pw, axis=2)
    expected = np.zeros(x.shape)
    expected[:, :rows, :columns] = x[:, :rows, :columns] * spread
    np.testing.assert_allclose(input_gradient(layer, x, upstream), expected, rtol=1e-5, atol=1e-6)


def _l2_norm_pooled_by_window_sums(inputs, pool_size, eps, scale):
    """scale * (sqrt(mean over each window of x^2 + eps^2) - eps), the windows summed by a reshape."""
    (ph, pw), (height, width, channels) = pool_size, inputs.shape[1:]
    rows, columns = height // ph, width // pw
    windows = keras.ops.reshape(inputs[:, : rows * ph, : columns * pw], (-1, rows, ph, columns, pw, channels))
    mean_square = keras.ops.mean(keras.ops.square(windows), axis=(2, 4))
    return scale * (keras.ops.sqrt(mean_square + eps * eps) - eps)


@pytest.mark.parametrize("pool_size", POOL_SIZES)
def test_l2_norm_pooling_second_derivatives_are_those_of_its_math(pool_size):
    # The layer's pooling (average pooling of the squares) differentiated twice, as tulip's gradient
    # penalty does, against autodiff of the same math written with window sums.
    x = _random((2, 7, 8, 3))
    arguments = (_pair(pool_size), 0.05, 1.7)
    upstream = _random(ScaledL2NormPooling2D(pool_size).compute_output_shape(x.shape), seed=5)
    pooled = gradient_of_weighted_gradient(lambda z: pooling._l2_norm_pooled(z, *arguments), x, upstream)
    reference = gradient_of_weighted_gradient(lambda z: _l2_norm_pooled_by_window_sums(z, *arguments), x, upstream)
    assert np.abs(reference).max() > 0.1
    np.testing.assert_allclose(pooled, reference, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("make", [ScaledL2NormPooling2D, ScaledAveragePooling2D])
def test_float64_pooling_keeps_its_constants_in_float64(make, float64):
    # The scale k sqrt(area) and eps enter at the model's precision: rounded to float32 first, a
    # k of 1.7 would multiply by 1.70000005, a constant above the certified one.
    x = _random((2, 6, 6, 3), dtype="float64")
    layer = make((3, 3), k_coef_lip=1.7)
    windows = _windows(x, (3, 3))
    if make is ScaledL2NormPooling2D:
        eps = layer.eps_grad_sqrt
        expected = 1.7 * (np.sqrt(np.sum(windows**2, axis=-1) + eps**2) - eps)
    else:
        expected = 1.7 * np.sum(windows, axis=-1) / 3.0
    np.testing.assert_allclose(_numpy(layer(x)), expected, rtol=1e-13, atol=0)


def test_scaled_l2_norm_pooling_alias():
    assert ScaledL2NormPooling is ScaledL2NormPooling2D


def test_output_shapes():
    x = _random((2, 7, 6, 3))
    for layer in (ScaledAveragePooling2D(3), ScaledL2NormPooling2D((3, 2)), ScaledGlobalL2NormPooling2D()):
        assert layer.compute_output_shape(x.shape) == tuple(_numpy(layer(x)).shape)
    assert ScaledL2NormPooling2D((3, 2)).compute_output_shape((None, 7, 6, 3)) == (None, 2, 3, 3)
    assert ScaledGlobalAveragePooling2D().compute_output_shape((None, 7, 6, 3)) == (None, 3)


CONFIG_LAYERS = [
    lambda: ScaledAveragePooling2D((3, 2), strides=(3, 2), k_coef_lip=2.0),
    lambda: ScaledL2NormPooling2D(2, k_coef_lip=0.5, eps_grad_sqrt=1e-3),
    lambda: ScaledGlobalAveragePooling2D(k_coef_lip=2.0),
    lambda: ScaledGlobalL2NormPooling2D(k_coef_lip=3.0, eps_grad_sqrt=0.25),
]


@pytest.mark.parametrize("make", CONFIG_LAYERS)
def test_config_round_trip_keeps_every_argument(make):
    layer = make()
    clone = layer.__class__.from_config(layer.get_config())
    assert clone.get_config() == layer.get_config()
    x = _random((2, 6, 6, 3))
    np.testing.assert_array_equal(_numpy(clone(x)), _numpy(layer(x)))


def test_eps_grad_sqrt_survives_a_keras_file(tmp_path):
    inputs = keras.Input((6, 6, 2))
    hidden = ScaledL2NormPooling2D(eps_grad_sqrt=0.5)(ScaledAveragePooling2D(1, k_coef_lip=2.0)(inputs))
    model = keras.Model(inputs, ScaledGlobalL2NormPooling2D(eps_grad_sqrt=0.25)(hidden))
    path = tmp_path / "pooling.keras"
    model.save(path)
    loaded = keras.saving.load_model(path)
    assert loaded.layers[2].eps_grad_sqrt == 0.5 and loaded.layers[3].eps_grad_sqrt == 0.25
    x = _random((3, 6, 6, 2))
    np.testing.assert_array_equal(_numpy(loaded(x)), _numpy(model(x)))


@pytest.mark.parametrize("make", [ScaledAveragePooling2D, ScaledL2NormPooling2D])
def test_bad_window_arguments_are_rejected(make):
    with pytest.raises(ValueError, match="strides"):
        make((2, 2), strides=(1, 1))
    with pytest.raises(ValueError, match="strides"):
        make(3, strides=2)
    with pytest.raises(ValueError, match="padding"):
        make((2, 2), padding="same")
    for bad in (0, (2, 0), (2,), 1.5, "2"):
        with pytest.raises(ValueError, match="pool_size"):
            make(bad)
    with pytest.raises(ValueError, match="k_coef_lip"):
        make(k_coef_lip=0.0)
    with pytest.raises(ValueError, match="data_format"):
        make(data_format="channels_first")


def test_equal_strides_are_accepted():
    layer = ScaledAveragePooling2D(3, strides=(3, 3))
    assert layer.strides == (3, 3) and layer.padding == "valid"
    assert ScaledL2NormPooling2D((2, 2), padding="VALID").padding == "valid"


@pytest.mark.parametrize("make", [ScaledL2NormPooling2D, ScaledGlobalL2NormPooling2D])
@pytest.mark.parametrize("eps", [-1e-3, float("nan"), "1e-6"])
def test_bad_eps_grad_sqrt_is_rejected(make, eps):
    with pytest.raises(ValueError, match="eps_grad_sqrt"):
        make(eps_grad_sqrt=eps)


@pytest.mark.parametrize("make", [ScaledGlobalAveragePooling2D, ScaledGlobalL2NormPooling2D])
def test_global_pooling_needs_a_known_spatial_size(make):
    with pytest.raises(ValueError, match="height and width"):
        make()(keras.Input((None, 4, 3)))
    with pytest.raises(ValueError, match="k_coef_lip"):
        make(k_coef_lip=-1.0)
    with pytest.raises(ValueError, match="data_format"):
        make(data_format="channels_first")
