"""OSSN, RKO and SVCM convolutions: exact norms by FFT / dense operators, adjoint, projection, callback."""

import keras
import numpy as np
import pytest

from deel_lip_ext import callbacks
from deel_lip_ext import layers as lip
from deel_lip_ext.parametrizations import clip_and_mask
from deel_lip_ext.model import Sequential
from deel_lip_ext.utils import conv_operator_matrix, conv_singular_values, model_lipschitz_bound


def _exact_norm(layer, kernel=None):
    """Largest singular value of the layer's operator (with `kernel`, default its effective one), independently."""
    kernel = layer.effective_kernel() if kernel is None else kernel
    kernel = keras.ops.convert_to_numpy(kernel).astype(np.float64)
    if layer.padding == "circular":
        symbols = np.fft.fft2(kernel, s=layer.conv_input_shape[:2], axes=(0, 1))
        return np.linalg.svd(symbols, compute_uv=False).max()
    operator = conv_operator_matrix(kernel, layer.conv_input_shape, (1, 1), layer.padding)
    return np.linalg.svd(operator, compute_uv=False).max()


def _train(layer, input_shape, steps, learning_rate=1e-2):
    rng = np.random.default_rng(0)
    model = keras.Sequential([keras.Input(input_shape), layer])
    model.compile(keras.optimizers.Adam(learning_rate), "mse")
    x = rng.normal(size=(2 * steps,) + input_shape).astype("float32")
    y = rng.normal(size=(2 * steps,) + model.output_shape[1:]).astype("float32")
    model.fit(x, y, batch_size=2, epochs=1, verbose=0)
    return model


@pytest.mark.parametrize("padding", ["circular", "same", "valid"])
@pytest.mark.parametrize("kernel_size", [2, 3])
def test_ossn_adjoint_is_exact(padding, kernel_size):
    layer = lip.OSSNConv2D(4, kernel_size, padding=padding)
    layer.build((None, 6, 6, 3))
    kernel = keras.ops.convert_to_numpy(layer.kernel)
    forward, backward = layer._operator_and_adjoint(kernel)
    matrix = conv_operator_matrix(kernel, (6, 6, 3), (1, 1), padding)  # rows: inputs, columns: outputs
    rng = np.random.default_rng(1)
    v = rng.normal(size=(1, 6, 6, 3)).astype("float32")
    u = rng.normal(size=tuple(layer.u.shape)).astype("float32")
    np.testing.assert_allclose(keras.ops.convert_to_numpy(forward(v)).ravel(), v.ravel() @ matrix, atol=1e-4)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(backward(u)).ravel(), matrix @ u.ravel(), atol=1e-4)


@pytest.mark.parametrize("strides, padding", [(1, "circular"), (2, "circular"), (1, "same")])
def test_ossn_after_training_estimate_and_norm(strides, padding):
    layer = lip.OSSNConv2D(8, 2 * strides, strides=strides, padding=padding)
    _train(layer, (8, 8, 4), steps=60)
    raw_norm = _exact_norm(layer, layer.kernel)
    sigma, _ = layer.spectral_norm_estimate()
    assert abs(float(sigma) - raw_norm) < 1e-3 * raw_norm
    assert raw_norm > 1.0  # the normalization is active, so the effective norm is exactly its target
    assert _exact_norm(layer) <= 1 + 1e-3
    np.testing.assert_allclose(layer.lipschitz_sv()[1], _exact_norm(layer), rtol=1e-6)


def test_ossn_only_scales_down():
    layer = lip.OSSNConv2D(4, 3, kernel_initializer=keras.initializers.RandomNormal(stddev=1e-3))
    layer.build((None, 6, 6, 4))
    np.testing.assert_array_equal(
        keras.ops.convert_to_numpy(layer.effective_kernel()), keras.ops.convert_to_numpy(layer.kernel)
    )


@pytest.mark.parametrize("kernel_size, strides, padding", [(3, 1, "circular"), (4, 2, "circular"), (3, 1, "same")])
def test_rko_reshaped_kernel_is_orthonormal_and_conv_is_one_lipschitz(kernel_size, strides, padding):
    layer = lip.RKOConv2D(8, kernel_size, strides=strides, padding=padding)
    _train(layer, (8, 8, 4), steps=30)
    kernel = keras.ops.convert_to_numpy(layer.effective_kernel())
    matrix = kernel.reshape(-1, kernel.shape[-1]) / layer.lipschitz_coefficient
    np.testing.assert_allclose(matrix.T @ matrix, np.eye(8), atol=1e-5)
    if padding == "circular":
        assert layer.lipschitz_coefficient == pytest.approx(1.0 / np.prod(layer.conv_kernel_size) ** 0.5)
    norm = _exact_norm(layer)
    assert norm <= 1 + 1e-5
    np.testing.assert_allclose(layer.lipschitz_sv()[1], norm, rtol=1e-6)


def test_clip_and_mask_without_crop_clips_exactly():
    # When the kernel covers the whole torus the crop is the identity: one round is an exact projection.
    rng = np.random.default_rng(2)
    kernel = rng.normal(size=(4, 4, 3, 5))
    projected = clip_and_mask(kernel, (4, 4), max_singular_value=0.5, iterations=1)
    values = conv_singular_values(projected, 4)
    original = conv_singular_values(kernel, 4)
    np.testing.assert_allclose(np.sort(values), np.sort(np.minimum(original, 0.5)), atol=1e-10)


def test_svcm_projection_measured_norm_and_certificate():
    model = Sequential(
        [
            keras.Input((8, 8, 4)),
            lip.SVCMConv2D(8, 3, name="svcm_a"),
            lip.MaxMinHalves(),
            lip.SVCMConv2D(8, 4, strides=2, name="svcm_b"),
            keras.layers.Flatten(),
            lip.BjorckDense(3, name="head"),
        ]
    )
    layers = [model.get_layer("svcm_a"), model.get_layer("svcm_b")]
    assert max(_exact_norm(layer) for layer in layers) > 1.2  # unconstrained before projecting
    measured = [layer.project() for layer in layers]
    for layer, value in zip(layers, measured):
        exact = _exact_norm(layer)
        assert exact <= 1.01 and exact == pytest.approx(value, rel=1e-9)
    assert max(measured) > 1.0  # masking leaves the norm above 1: certify with the measured value
    bound = model_lipschitz_bound(model.vanilla_export())
    head = np.linalg.svd(keras.ops.convert_to_numpy(model.get_layer("head").effective_kernel()), compute_uv=False).max()
    assert bound == pytest.approx(np.prod(measured) * head, rel=1e-6)


def test_generic_bound_of_unexported_strided_layers():
    model = Sequential([keras.Input((8, 8, 4)), lip.SVCMConv2D(8, 4, strides=2, name="svcm"), keras.layers.Flatten()])
    model.get_layer("svcm").project()
    exact = _exact_norm(model.get_layer("svcm"))
    assert model_lipschitz_bound(model) == pytest.approx(exact, rel=1e-6)


def test_svcm_callback_projects_every_n_steps_and_at_epoch_end():
    layer = lip.SVCMConv2D(4, 3, name="svcm")
    model = keras.Sequential([keras.Input((6, 6, 4)), layer])
    model.compile(keras.optimizers.Adam(5e-2), "mse")
    projections = []

    class CountingProjection(callbacks.SVCMProjection):
        def project(self):
            projections.append(1)
            super().project()

    callback = CountingProjection(every_n_steps=3)
    rng = np.random.default_rng(3)
    x = rng.normal(size=(14, 6, 6, 4)).astype("float32")
    model.fit(x, 10 * x[..., :4], batch_size=2, epochs=1, verbose=0, callbacks=[callback])
    # Batches 0..6: projections after batches 0, 3 and 6, and at the epoch end.
    assert len(projections) == 4
    assert callback.measured_norms["svcm"] == pytest.approx(_exact_norm(layer), rel=1e-9)
    assert callback.measured_norms["svcm"] <= 1.01


@pytest.mark.parametrize("layer_class", [lip.OSSNConv2D, lip.SVCMConv2D])
def test_real_input_size_is_required(layer_class):
    with pytest.raises(ValueError, match="known spatial dimensions"):
        layer_class(4, 3, padding="same").build((None, None, None, 3))


@pytest.mark.parametrize(
    "layer_class, kwargs, match",
    [
        (lip.OSSNConv2D, {"power_iterations": 0}, "power_iterations"),
        (lip.RKOConv2D, {"bjorck_iterations": -1}, "bjorck_iterations"),
        (lip.SVCMConv2D, {"num_projections": 1.5}, "num_projections"),
        (lip.RKOConv2D, {"strides": 2}, "multiple of strides"),
    ],
)
def test_argument_errors(layer_class, kwargs, match):
    with pytest.raises(ValueError, match=match):
        layer_class(4, 3, **kwargs)


def test_callback_argument_error():
    with pytest.raises(ValueError, match="every_n_steps"):
        callbacks.SVCMProjection(every_n_steps=0)
