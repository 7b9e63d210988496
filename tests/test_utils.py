import keras
import numpy as np
import pytest

from deel_lip_ext import layers as lip
from deel_lip_ext.model import Model, Sequential
from deel_lip_ext.utils import (
    compute_layer_sv,
    compute_model_sv,
    conv_singular_values,
    evaluate_lip_const,
    layer_singular_values,
    model_lipschitz_bound,
)


def _numpy_circular_conv_matrix(kernel, n):
    """Operator of a circular cross-correlation (pad k//2 before), built with numpy only."""
    kh, kw, c_in, c_out = kernel.shape
    matrix = np.zeros((n * n * c_in, n * n * c_out))
    for i in range(n):
        for j in range(n):
            for a in range(kh):
                for b in range(kw):
                    src = ((i + a - kh // 2) % n, (j + b - kw // 2) % n)
                    rows = (src[0] * n + src[1]) * c_in + np.arange(c_in)
                    cols = (i * n + j) * c_out + np.arange(c_out)
                    matrix[np.ix_(rows, cols)] += kernel[a, b]
    return matrix


@pytest.mark.parametrize("shape, n", [((3, 3, 2, 4), 5), ((2, 2, 3, 3), 4), ((5, 5, 1, 2), 3), ((1, 3, 4, 2), 6)])
def test_conv_singular_values_matches_dense_operator(shape, n):
    kernel = np.random.default_rng(0).normal(size=shape)
    exact = np.sort(np.linalg.svd(_numpy_circular_conv_matrix(kernel, n), compute_uv=False))[::-1]
    fft = np.sort(conv_singular_values(kernel, n))[::-1]
    np.testing.assert_allclose(fft, exact[: fft.size], atol=1e-9)


def test_compute_layer_sv_for_each_kind():
    dense = lip.SpectralDense(6, k_coef_lip=2.0)
    dense.build((None, 6))
    assert compute_layer_sv(dense) == pytest.approx((2.0, 2.0), abs=1e-3)

    conv = lip.SpectralConv2D(4, 3, padding="circular")
    conv.build((None, 5, 5, 2))
    lo, hi = compute_layer_sv(conv)
    values = conv_singular_values(keras.ops.convert_to_numpy(conv.effective_kernel()), 5)
    assert (lo, hi) == pytest.approx((values.min(), values.max()))
    assert hi <= 1 + 1e-6

    plain = keras.layers.Dense(3, use_bias=True)
    plain.build((None, 4))
    assert compute_layer_sv(plain)[1] == pytest.approx(
        np.linalg.svd(keras.ops.convert_to_numpy(plain.kernel), compute_uv=False).max()
    )
    assert compute_layer_sv(keras.layers.ReLU()) == (0.0, 1.0)
    assert compute_layer_sv(lip.GroupSort2(k_coef_lip=3.0)) == (3.0, 3.0)
    assert compute_layer_sv(keras.layers.Dense(3, activation="gelu")) is None
    assert compute_layer_sv(keras.layers.BatchNormalization()) is None


def test_large_zero_padded_conv_bound_is_an_upper_bound():
    conv = lip.SpectralConv2D(8, 3, padding="same")
    conv.build((None, 40, 40, 8))  # too big for a dense operator: bound from the torus
    lo, hi = compute_layer_sv(conv)
    small = lip.SpectralConv2D(8, 3, padding="same")
    small.build((None, 6, 6, 8))
    small.set_weights(conv.get_weights()[: len(small.get_weights())])
    # The same kernel on a smaller zero-padded image cannot exceed the big-image bound.
    assert compute_layer_sv(small)[1] <= hi + 1e-6
    assert lo == 0.0 and hi <= 1 + 1e-6
    assert layer_singular_values(conv).max() == pytest.approx(hi)


def test_model_bound_product_sum_and_exported_circular_pairs():
    model = Sequential(
        [
            keras.Input((6, 6, 2)),
            lip.SpectralConv2D(4, 3, padding="circular", name="c"),
            lip.GroupSort2(),
            keras.layers.Flatten(),
            lip.SpectralDense(5, k_coef_lip=0.5, name="d"),
        ]
    )
    per_layer = compute_model_sv(model)
    expected = per_layer["c"][1] * per_layer["d"][1]
    assert model_lipschitz_bound(model) == pytest.approx(expected)
    exported = model.vanilla_export()
    exported_sv = compute_model_sv(exported)
    assert exported_sv["c"] == pytest.approx(per_layer["c"], abs=1e-6)
    assert model_lipschitz_bound(exported) == pytest.approx(expected, rel=1e-6)

    inputs = keras.Input((4,))
    a = lip.SpectralDense(4, k_coef_lip=2.0)(inputs)
    b = lip.SpectralDense(4, k_coef_lip=3.0)(inputs)
    branchy = Model(inputs, lip.SpectralDense(2, k_coef_lip=0.5)(keras.layers.Add()([a, b])))
    assert model_lipschitz_bound(branchy) == pytest.approx((2.0 + 3.0) * 0.5, rel=1e-3)


def test_model_bound_names_the_unknown_layer():
    model = keras.Sequential(
        [keras.Input((3,)), lip.SpectralDense(3), keras.layers.Dense(2, activation="exponential", name="mystery")]
    )
    with pytest.raises(ValueError, match="mystery"):
        model_lipschitz_bound(model)


def test_evaluate_lip_const_is_exact_for_linear_and_below_the_bound():
    linear = keras.Sequential([keras.Input((5,)), keras.layers.Dense(3, use_bias=False)])
    x = np.random.default_rng(0).normal(size=(8, 5)).astype("float32")
    kernel = keras.ops.convert_to_numpy(linear.layers[0].kernel)
    assert evaluate_lip_const(linear, x) == pytest.approx(np.linalg.svd(kernel, compute_uv=False).max(), rel=1e-5)

    lip_model = Sequential(
        [
            keras.Input((6, 6, 1)),
            lip.SpectralConv2D(4, 3),
            lip.GroupSort2(),
            keras.layers.Flatten(),
            lip.SpectralDense(3),
        ]
    )
    xs = np.random.default_rng(1).normal(size=(8, 6, 6, 1)).astype("float32")
    assert 0 < evaluate_lip_const(lip_model, xs) <= model_lipschitz_bound(lip_model) * (1 + 1e-5)


def test_evaluate_lip_const_on_scalar_outputs():
    scalar = keras.Sequential([keras.Input((4,)), keras.layers.Dense(1, use_bias=False), keras.layers.Reshape(())])
    x = np.random.default_rng(2).normal(size=(6, 4)).astype("float32")
    kernel = keras.ops.convert_to_numpy(scalar.layers[0].kernel)
    assert evaluate_lip_const(scalar, x) == pytest.approx(np.linalg.norm(kernel), rel=1e-5)


def test_evaluate_lip_const_eps_adds_the_jacobians_of_nearby_points():
    # deel-lip's eps and seed: the Jacobian is also taken at x + noise, noise uniform in [eps / 4, eps].
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(16, activation="relu"), keras.layers.Dense(2)])
    rng = np.random.default_rng(4)
    x = rng.normal(size=(5, 3)).astype("float32")
    noisy = x + np.random.default_rng(7).uniform(0.25 * 0.5, 0.5, size=x.shape).astype("float32")
    w1, b1, w2 = (keras.ops.convert_to_numpy(v).astype(np.float64) for v in model.weights[:3])

    def jacobian_norm(point):
        active = (point @ w1 + b1 > 0).astype(np.float64)
        return np.linalg.svd((w1 * active) @ w2, compute_uv=False).max()

    at_points = max(jacobian_norm(p) for p in x)
    assert evaluate_lip_const(model, x, eps=0.0) == pytest.approx(at_points, rel=1e-5)
    expected = max(at_points, max(jacobian_norm(p) for p in noisy))
    assert evaluate_lip_const(model, x, eps=0.5, seed=7, batch_size=4) == pytest.approx(expected, rel=1e-5)
    assert evaluate_lip_const(model, x, 0.5, 7) == evaluate_lip_const(model, x, eps=0.5, seed=7)
