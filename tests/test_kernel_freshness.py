"""The constrained kernel is never stale, and a bare call never changes state."""

import keras
import numpy as np
import pytest
from _backend import input_gradient

from deel_lip_ext import normalizers
from deel_lip_ext.layers import FrobeniusConv2D, SpectralConv2D, SpectralDense


def _reference_dense_kernel(layer):
    """The kernel the raw variables define, recomputed independently of the layer's cache."""
    kernel, _, _ = normalizers.reshaped_kernel_orthogonalization(
        keras.ops.convert_to_numpy(layer.kernel),
        keras.ops.convert_to_numpy(layer.u),
        adjustment_coef=layer.k_coef_lip,
    )
    return keras.ops.convert_to_numpy(kernel)


def _inference_output(layer, x):
    return keras.ops.convert_to_numpy(layer(x, training=False))


def _expected_dense_output(layer, x):
    return x @ _reference_dense_kernel(layer) + keras.ops.convert_to_numpy(layer.bias)


@pytest.fixture
def dense_model():
    layer = SpectralDense(6, k_coef_lip=2.0, kernel_initializer="glorot_uniform")
    model = keras.Sequential([keras.Input((5,)), layer])
    model.compile(keras.optimizers.Adam(1e-2), "mse")
    return model, layer


def test_right_after_build_inference_uses_constrained_kernel(dense_model):
    model, layer = dense_model
    x = np.random.default_rng(0).normal(size=(4, 5)).astype("float32")
    np.testing.assert_allclose(_inference_output(layer, x), _expected_dense_output(layer, x), atol=1e-5)
    np.testing.assert_allclose(model.predict(x, verbose=0), _expected_dense_output(layer, x), atol=1e-5)


def test_after_every_training_step(dense_model):
    model, layer = dense_model
    rng = np.random.default_rng(1)
    x = rng.normal(size=(8, 5)).astype("float32")
    for _ in range(3):
        model.train_on_batch(x, rng.normal(size=(8, 6)).astype("float32"))
        np.testing.assert_allclose(model.predict(x, verbose=0), _expected_dense_output(layer, x), atol=1e-5)
        np.testing.assert_allclose(model.predict_on_batch(x), _expected_dense_output(layer, x), atol=1e-5)


def test_after_set_weights_assign_and_load_weights(dense_model, tmp_path):
    model, layer = dense_model
    x = np.random.default_rng(2).normal(size=(4, 5)).astype("float32")
    before = model.predict(x, verbose=0)  # fills the cache
    model.save_weights(tmp_path / "w.weights.h5")

    layer.kernel.assign(np.random.default_rng(3).normal(size=(5, 6)).astype("float32"))
    after_assign = model.predict(x, verbose=0)
    assert np.abs(after_assign - before).max() > 1e-2
    np.testing.assert_allclose(after_assign, _expected_dense_output(layer, x), atol=1e-5)

    model.load_weights(tmp_path / "w.weights.h5")
    np.testing.assert_allclose(model.predict(x, verbose=0), before, atol=1e-6)

    weights = model.get_weights()
    weights[0] = weights[0] * -3.0
    model.set_weights(weights)
    np.testing.assert_allclose(model.predict(x, verbose=0), _expected_dense_output(layer, x), atol=1e-5)


def test_bare_call_does_not_change_parametrization_state(dense_model):
    _, layer = dense_model
    x = np.random.default_rng(4).normal(size=(4, 5)).astype("float32")
    u_before = keras.ops.convert_to_numpy(layer.u).copy()
    kernel_before = keras.ops.convert_to_numpy(layer.kernel).copy()
    layer(x)
    layer(x, training=False)
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(layer.u), u_before)
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(layer.kernel), kernel_before)
    # Only an explicit training call advances the power iteration.
    layer(x, training=True)
    assert np.abs(keras.ops.convert_to_numpy(layer.u) - u_before).max() > 0


@pytest.mark.parametrize("layer_cls", [SpectralConv2D, FrobeniusConv2D])
def test_conv_export_and_inference_agree_after_training(layer_cls):
    layer = layer_cls(4, 3, padding="same", k_coef_lip=0.5, kernel_initializer="glorot_uniform")
    model = keras.Sequential([keras.Input((6, 6, 2)), layer])
    model.compile(keras.optimizers.Adam(1e-2), "mse")
    rng = np.random.default_rng(5)
    x = rng.normal(size=(4, 6, 6, 2)).astype("float32")
    model.predict(x, verbose=0)
    model.train_on_batch(x, rng.normal(size=(4, 6, 6, 4)).astype("float32"))
    exported = model.layers[0].vanilla_export()[0]
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(exported.kernel), keras.ops.convert_to_numpy(layer.effective_kernel()), atol=0
    )
    np.testing.assert_allclose(model.predict(x, verbose=0), keras.ops.convert_to_numpy(exported(x)), atol=1e-5)


def test_condense_keeps_the_function(dense_model):
    model, layer = dense_model
    x = np.random.default_rng(6).normal(size=(4, 5)).astype("float32")
    before = model.predict(x, verbose=0)
    layer.condense()
    np.testing.assert_allclose(model.predict(x, verbose=0), before, atol=1e-4)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(layer.kernel), _reference_dense_kernel(layer), atol=1e-4)


def test_shared_layer_input_gradient_through_two_inference_calls():
    # The second call rewrites the cache; on torch that write is in place, so the first call must
    # hold its own copy of the cached kernel or its backward fails ("modified by an inplace operation").
    layer = SpectralDense(4, kernel_initializer="glorot_uniform")
    inputs = keras.Input((4,))
    model = keras.Model(inputs, layer(layer(inputs)))
    x = np.random.default_rng(0).normal(size=(3, 4)).astype("float32")
    model(x)  # fills the cache: both calls below read it
    kernel = keras.ops.convert_to_numpy(layer.effective_kernel())
    gradient = input_gradient(lambda t: model(t, training=False), x)
    np.testing.assert_allclose(gradient, np.ones((3, 4)) @ (kernel @ kernel).T, atol=1e-5)


def test_predict_after_an_eager_call_and_again(dense_model):
    # JAX's predict donates every state buffer once: the cache snapshot must not share the kernel's.
    model, layer = dense_model
    x = np.random.default_rng(1).normal(size=(8, 5)).astype("float32")
    eager = _inference_output(layer, x)
    for _ in range(2):
        np.testing.assert_allclose(model.predict(x, verbose=0), eager, atol=1e-6)
    np.testing.assert_allclose(_inference_output(layer, x), _expected_dense_output(layer, x), atol=1e-5)
