"""BCOPConv2D and BjorckDense: exact orthogonality (FFT, float64 impulse responses), GNP, export, errors."""

import keras
import numpy as np
import pytest
from _backend import input_gradient

from deel_lip_ext import layers as lip
from deel_lip_ext.parametrizations import batched_bjorck, bcop_kernel, orthonormalize_stack
from deel_lip_ext.model import Sequential
from deel_lip_ext.utils import compute_layer_sv, conv_singular_values, model_lipschitz_bound

# (c_in, c_out, kernel, stride): equal, expanding and shrinking channels, stride 1 and 2.
CASES = [
    (16, 16, 3, 1),
    (8, 32, 3, 1),
    (64, 32, 2, 1),
    (3, 16, 2, 1),
    (1, 32, 3, 1),
    (32, 64, 5, 1),
    (3, 16, 4, 2),
    (16, 8, 4, 2),
    (2, 8, 4, 2),
    (32, 16, 2, 2),
]
SIZE = 8


def _numpy_spectrum(kernel, n):
    """Singular values per frequency (n*n, min(c_in, c_out)) of a circular conv, independently of the library."""
    symbols = np.fft.fft2(np.asarray(kernel, dtype=np.float64), s=(n, n), axes=(0, 1))
    return np.linalg.svd(symbols, compute_uv=False).reshape(n * n, -1)


def _built_bcop(c_in, c_out, k, stride, **kwargs):
    layer = lip.BCOPConv2D(c_out, k, strides=stride, **kwargs)
    layer.build((None, SIZE, SIZE, c_in))
    return layer


def _assert_orthogonal_spectrum(layer, tolerance):
    kernel = keras.ops.convert_to_numpy(layer.effective_kernel())
    real_size = SIZE // layer.strides[0]
    for n in (2 * kernel.shape[0] - 1, real_size):
        library = conv_singular_values(kernel, n)
        independent = _numpy_spectrum(kernel, n)
        assert independent.shape[1] == min(kernel.shape[2:])
        assert np.abs(independent - 1).max() < tolerance
        np.testing.assert_allclose(np.sort(library), np.sort(independent.ravel()), atol=1e-12)
    low, high = layer.lipschitz_sv()
    assert abs(low - 1) < tolerance and abs(high - 1) < tolerance


@pytest.mark.parametrize("c_in, c_out, k, stride", CASES)
def test_orthogonal_at_init(c_in, c_out, k, stride):
    layer = _built_bcop(c_in, c_out, k, stride)
    assert layer.effective_kernel().shape == (k // stride, k // stride, c_in * stride**2, c_out)
    _assert_orthogonal_spectrum(layer, 1e-4)


def _train_layer(layer, c_in, steps, learning_rate=1e-2):
    rng = np.random.default_rng(1)
    model = keras.Sequential([keras.Input((SIZE, SIZE, c_in)), layer])
    model.compile(keras.optimizers.Adam(learning_rate), "mse")
    x = rng.normal(size=(2 * steps, SIZE, SIZE, c_in)).astype("float32")
    y = rng.normal(size=(2 * steps,) + model.output_shape[1:]).astype("float32")
    before = keras.ops.convert_to_numpy(layer.effective_kernel())
    model.fit(x, y, batch_size=2, epochs=1, verbose=0)
    assert np.abs(keras.ops.convert_to_numpy(layer.effective_kernel()) - before).max() > 1e-2
    return model


def test_orthogonal_after_a_few_adam_steps():
    layer = lip.BCOPConv2D(8, 4, strides=2)
    _train_layer(layer, 4, steps=30)
    _assert_orthogonal_spectrum(layer, 1e-4)


@pytest.mark.slow
@pytest.mark.parametrize("c_in, c_out, k, stride", CASES)
def test_orthogonal_after_200_adam_steps(c_in, c_out, k, stride):
    layer = lip.BCOPConv2D(c_out, k, strides=stride)
    _train_layer(layer, c_in, steps=200)
    _assert_orthogonal_spectrum(layer, 1e-4)


def test_bjorck_output_and_projectors():
    layer = _built_bcop(16, 12, 3, 1)
    orthonormal = keras.ops.convert_to_numpy(layer.orthonormal_matrices()[0])
    assert orthonormal.shape == (5, 16, 16)
    gram = np.swapaxes(orthonormal, 1, 2) @ orthonormal
    assert np.abs(gram - np.eye(16)).max() < 1e-5
    assert np.linalg.svd(orthonormal, compute_uv=False).max() < 1 + 1e-6
    frames = orthonormal[1:, :, :8]
    projectors = frames @ np.swapaxes(frames, 1, 2)
    assert np.abs(projectors @ projectors - projectors).max() < 1e-5
    assert np.abs(projectors - np.swapaxes(projectors, 1, 2)).max() < 1e-6
    np.testing.assert_allclose(np.trace(projectors, axis1=1, axis2=2), 8.0, atol=1e-4)


def test_batched_bjorck_matches_a_numpy_reference():
    rng = np.random.default_rng(0)
    stack = rng.normal(size=(3, 6, 4))
    stack /= np.linalg.norm(stack, ord=2, axis=(1, 2))[:, None, None]
    expected = stack.copy()
    for _ in range(20):
        expected = 1.5 * expected - 0.5 * expected @ (np.swapaxes(expected, 1, 2) @ expected)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(batched_bjorck(stack, 20)), expected, atol=1e-12)
    wide = np.swapaxes(stack, 1, 2)
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(batched_bjorck(wide, 20)), np.swapaxes(expected, 1, 2), atol=1e-12
    )


def test_float64_impulse_response_of_exported_layers(float64):
    # c_in=2, c_out=8 on 8x8 with stride 2: downsampling to 4x4x8, then a 2x2 circular BCOP.
    layer = lip.BCOPConv2D(8, 4, strides=2, use_bias=False)
    layer.build((None, 8, 8, 2))
    raw = keras.ops.convert_to_numpy(layer.raw_matrices).astype(np.float64)
    orthonormal, _ = orthonormalize_stack(raw, np.ones(raw.shape[:2]), dtype="float64")
    kernel = keras.ops.convert_to_numpy(bcop_kernel(orthonormal, (2, 2), 8, 8))
    exported = layer.plain_layers(kernel)
    assert [type(x) for x in exported] == [lip.InvertibleDownSampling, lip.CircularPadding2D, keras.layers.Conv2D]

    impulses = np.eye(8 * 8 * 2).reshape(-1, 8, 8, 2)
    responses = impulses
    for plain in exported:
        responses = plain(responses)
    jacobian = keras.ops.convert_to_numpy(responses).reshape(len(impulses), -1)
    assert jacobian.dtype == np.float64
    values = np.linalg.svd(jacobian, compute_uv=False)
    assert values.size == 128 and np.abs(values - 1).max() < 1e-8
    np.testing.assert_allclose(np.sort(values), np.sort(conv_singular_values(kernel, 4)), atol=1e-8)


def _input_gradient_norms(model, x, g):
    gradient = input_gradient(lambda inputs: model(inputs, training=False), x, g)
    return np.linalg.norm(gradient.reshape(len(g), -1), axis=1), np.linalg.norm(g.reshape(len(g), -1), axis=1)


def test_gnp_network_preserves_gradient_norms():
    model = Sequential(
        [
            keras.Input((8, 8, 4)),
            lip.BCOPConv2D(4, 3, use_bias=False),
            lip.MaxMinHalves(),
            lip.BCOPConv2D(8, 4, strides=2, use_bias=False),
            lip.MaxMinHalves(),
            keras.layers.Flatten(),
            lip.BjorckDense(32, use_bias=False),
            lip.MaxMinHalves(),
            lip.BjorckDense(10, use_bias=False),
        ]
    )
    rng = np.random.default_rng(3)
    x = rng.normal(size=(16, 8, 8, 4)).astype("float32")
    g = rng.normal(size=(16, 10)).astype("float32")
    gradient_norms, norms = _input_gradient_norms(model, x, g)
    np.testing.assert_allclose(gradient_norms, norms, rtol=1e-4)


@pytest.mark.parametrize("c_in, c_out, k, stride", [(4, 16, 3, 1), (2, 16, 2, 2), (3, 12, 4, 2)])
def test_isometry_preserves_norms(c_in, c_out, k, stride):
    layer = lip.BCOPConv2D(c_out, k, strides=stride, use_bias=False)
    x = np.random.default_rng(4).normal(size=(8, SIZE, SIZE, c_in)).astype("float32")
    y = keras.ops.convert_to_numpy(layer(x))
    norms = np.linalg.norm(x.reshape(8, -1), axis=1)
    np.testing.assert_allclose(np.linalg.norm(y.reshape(8, -1), axis=1), norms, rtol=1e-5)


@pytest.mark.parametrize("c_in, c_out, k, stride", [(16, 4, 3, 1), (8, 16, 2, 2)])
def test_co_isometry_preserves_gradient_norms(c_in, c_out, k, stride):
    layer = lip.BCOPConv2D(c_out, k, strides=stride, use_bias=False)
    model = keras.Sequential([keras.Input((SIZE, SIZE, c_in)), layer])
    rng = np.random.default_rng(5)
    x = rng.normal(size=(4, SIZE, SIZE, c_in)).astype("float32")
    g = rng.normal(size=(4,) + model.output_shape[1:]).astype("float32")
    gradient_norms, norms = _input_gradient_norms(model, x, g)
    np.testing.assert_allclose(gradient_norms, norms, rtol=1e-5)


def test_zero_padding_is_one_lipschitz_but_not_orthogonal():
    layer = _built_bcop(4, 4, 3, 1, padding="same")
    low, high = layer.lipschitz_sv()
    assert high <= 1 + 1e-5 and low < 0.99
    np.testing.assert_allclose(compute_layer_sv(layer), (low, high), atol=1e-6)


def test_non_square_kernel_and_k_coef_lip():
    layer = lip.BCOPConv2D(6, (3, 2), k_coef_lip=2.0)
    layer.build((None, SIZE, SIZE, 5))
    assert layer.raw_matrices.shape == (4, 6, 6)
    values = _numpy_spectrum(keras.ops.convert_to_numpy(layer.effective_kernel()), SIZE)
    assert np.abs(values - 2.0).max() < 2e-4


def test_stride_one_generic_bound_is_exact():
    layer = _built_bcop(8, 16, 3, 1)
    low, high = compute_layer_sv(layer)
    assert abs(low - 1) < 1e-5 and abs(high - 1) < 1e-5


def test_bjorck_dense_is_orthogonal_and_matches_a_numpy_reference():
    layer = lip.BjorckDense(12, kernel_initializer="glorot_uniform")
    layer.build((None, 20))
    raw = keras.ops.convert_to_numpy(layer.kernel).astype(np.float64)
    expected = raw / np.linalg.norm(raw, ord=2)
    for _ in range(20):
        expected = 1.5 * expected - 0.5 * expected @ (expected.T @ expected)
    kernel = keras.ops.convert_to_numpy(layer.effective_kernel())
    np.testing.assert_allclose(kernel, expected, atol=5e-5)
    np.testing.assert_allclose(np.linalg.svd(kernel, compute_uv=False), 1.0, atol=1e-4)


def test_pre_scaling_carries_no_gradient():
    # With the scale in the graph, W -> Björck(W / sigma(W)) is scale-invariant and the gradient has no
    # radial component <grad, W>; LConvNet detaches the scale, so before convergence the component is not 0.
    rng = np.random.default_rng(10)
    raw = rng.normal(size=(1, 6, 4)).astype("float32")
    weights = rng.normal(size=(1, 6, 4)).astype("float32")
    start = rng.normal(size=(1, 4))

    def loss(stack):
        orthonormal, _ = orthonormalize_stack(stack, start, bjorck_iterations=1, power_iterations=50)
        return keras.ops.multiply(orthonormal, weights)

    radial = float(np.sum(input_gradient(loss, raw) * raw))
    sigma = np.linalg.norm(raw[0], ord=2)
    scaled = raw[0] / sigma
    # d/dt of the loss along W -> t W with sigma fixed: Björck step b(tS) = 1.5 tS - 0.5 t^3 S S^T S.
    expected = np.sum(weights[0] * (1.5 * scaled - 1.5 * scaled @ scaled.T @ scaled))
    assert abs(expected) > 1e-2
    np.testing.assert_allclose(radial, expected, rtol=1e-3)


def _mixed_model():
    """Every convolution of the issue with each kind of export: strided circular, "same", circular."""
    return Sequential(
        [
            keras.Input((8, 8, 2)),
            lip.BCOPConv2D(8, 4, strides=2, name="bcop"),
            lip.MaxMinHalves(),
            lip.RKOConv2D(8, 3, padding="same", name="rko"),
            lip.MaxMinHalves(),
            lip.OSSNConv2D(8, 2, strides=2, name="ossn"),
            lip.MaxMinHalves(),
            lip.SVCMConv2D(4, 2, name="svcm"),
            keras.layers.Flatten(),
            lip.BjorckDense(4, name="head"),
        ]
    )


def test_training_cache_export_saved_model_round_trip_and_condense(tmp_path):
    model = _mixed_model()
    rng = np.random.default_rng(6)
    x = rng.uniform(size=(8, 8, 8, 2)).astype("float32")
    y = rng.normal(size=(8, 4)).astype("float32")
    model.compile(keras.optimizers.Adam(1e-2), "mse")
    model.train_on_batch(x, y)
    first = model.predict(x, verbose=0)
    model.train_on_batch(x, y)
    reference = model.predict(x, verbose=0)
    assert np.abs(reference - first).max() > 1e-3  # the inference cache followed the training step

    exported = model.vanilla_export()
    assert [type(layer).__name__ for layer in exported.layers] == [
        "InvertibleDownSampling", "CircularPadding2D", "Conv2D", "MaxMinHalves",
        "Conv2D", "MaxMinHalves",
        "InvertibleDownSampling", "CircularPadding2D", "Conv2D", "MaxMinHalves",
        "CircularPadding2D", "Conv2D", "Flatten", "Dense",
    ]  # fmt: skip
    np.testing.assert_allclose(exported.predict(x, verbose=0), reference, atol=1e-5)
    exported.export(str(tmp_path / "saved"), format="tf_saved_model", verbose=False)
    tf = pytest.importorskip("tensorflow")  # reloads the SavedModel
    reloaded = tf.saved_model.load(str(tmp_path / "saved"))
    np.testing.assert_allclose(reloaded.serve(x).numpy(), reference, atol=1e-5)

    # The bound of the exported model is the product of the layers' measured norms.
    measured = [model.get_layer(name).lipschitz_sv()[1] for name in ("bcop", "rko", "ossn", "svcm")]
    np.testing.assert_allclose(measured[0], 1.0, atol=1e-5)
    assert model_lipschitz_bound(exported) == pytest.approx(np.prod(measured), rel=1e-5)

    model.save(tmp_path / "model.keras")
    loaded = keras.models.load_model(tmp_path / "model.keras", safe_mode=True)
    np.testing.assert_allclose(loaded.predict(x, verbose=0), reference, atol=1e-6)
    model.train_on_batch(x, y)
    loaded.train_on_batch(x, y)
    continued = model.predict(x, verbose=0)
    np.testing.assert_allclose(loaded.predict(x, verbose=0), continued, atol=1e-5)

    model.condense()
    np.testing.assert_allclose(model.predict(x, verbose=0), continued, atol=1e-5)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"filters": 8, "kernel_size": 3, "strides": 2}, "multiple of strides"),
        ({"filters": 8, "kernel_size": 2, "strides": 4}, "must not exceed"),
        ({"filters": 0, "kernel_size": 3}, "filters"),
        ({"filters": 8, "kernel_size": 3, "padding": "reflect"}, "padding"),
        ({"filters": 8, "kernel_size": 3, "bjorck_iterations": 0}, "bjorck_iterations"),
        ({"filters": 8, "kernel_size": (3, 0)}, "kernel_size"),
    ],
)
def test_construction_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        lip.BCOPConv2D(**kwargs)


@pytest.mark.parametrize(
    "kwargs, input_shape, match",
    [
        ({"kernel_size": 3}, (None, 8, 8, 0), "input channels"),
        ({"kernel_size": 4, "strides": 2}, (None, 9, 8, 3), "divide the input height"),
        ({"kernel_size": 5}, (None, 1, 8, 3), "too large"),
        ({"kernel_size": 3}, (None, None, None, 3), "known spatial"),
    ],
)
def test_build_errors(kwargs, input_shape, match):
    with pytest.raises(ValueError, match=match):
        lip.BCOPConv2D(8, **kwargs).build(input_shape)


def test_config_round_trip():
    layer = lip.BCOPConv2D(8, 4, strides=2, padding="same", k_coef_lip=0.5, bjorck_iterations=25, name="c")
    clone = lip.BCOPConv2D.from_config(layer.get_config())
    assert (clone.strides, clone.padding, clone.k_coef_lip, clone.bjorck_iterations) == ((2, 2), "same", 0.5, 25)
    assert isinstance(clone.kernel_initializer, lip.StackedOrthogonal)
    dense = lip.BjorckDense.from_config(lip.BjorckDense(3, power_iterations=4).get_config())
    assert dense.power_iterations == 4


def test_stacked_orthogonal_gives_orthogonal_blocks():
    stack = keras.ops.convert_to_numpy(lip.StackedOrthogonal(seed=1)((4, 6, 6)))
    np.testing.assert_allclose(np.swapaxes(stack, 1, 2) @ stack, np.broadcast_to(np.eye(6), (4, 6, 6)), atol=1e-5)
    wide = keras.ops.convert_to_numpy(lip.StackedOrthogonal(seed=1)((2, 3, 5)))
    np.testing.assert_allclose(wide @ np.swapaxes(wide, 1, 2), np.broadcast_to(np.eye(3), (2, 3, 3)), atol=1e-5)
