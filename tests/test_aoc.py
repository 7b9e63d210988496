"""AOCConv2D / AOCConv2DTranspose: orthogonality of the exported operator after training, bounds, export, errors."""

import itertools

import keras
import numpy as np
import pytest

from deel_lip_ext import layers as lip
from deel_lip_ext import spectrum
from deel_lip_ext.normalizers import compose_conv_kernels
from deel_lip_ext.spectrum import conv_operator_matrix, strided_conv_norm
from deel_lip_ext.utils import model_lipschitz_bound

from _backend import to_numpy

TOL = 1e-3


def _size(k, s):
    """Smallest even input size >= 4 that fits circular padding of a k kernel."""
    return max(4, 2 * s, k + (k % 2))


def _trained(cls, c_in, c_out, k, s, padding, klip, size, steps=4, seed=0, **kwargs):
    layer = cls(c_out, k, strides=s, padding=padding, k_coef_lip=klip, bias_initializer="random_normal", **kwargs)
    model = keras.Sequential([keras.Input((size, size, c_in)), layer])
    model.compile(keras.optimizers.Adam(1e-2), "mse")
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(2 * steps, size, size, c_in)).astype("float32")
    y = rng.normal(size=(2 * steps, *model.output_shape[1:])).astype("float32")
    before = keras.ops.convert_to_numpy(layer.effective_kernel())
    model.fit(x, y, batch_size=2, epochs=1, verbose=0)
    assert np.abs(keras.ops.convert_to_numpy(layer.effective_kernel()) - before).max() > 1e-3
    return model, layer


def _exported_matrix(layer, input_shape):
    """(inputs, outputs) matrix of the exported stock layers' bias-free map, from unit impulses (float64)."""
    exported = keras.Sequential([keras.Input(input_shape), *layer.vanilla_export()])
    size = int(np.prod(input_shape))
    impulses = np.concatenate([np.zeros((1, size)), np.eye(size)]).reshape((size + 1, *input_shape))
    out = exported.predict(impulses.astype("float32"), verbose=0, batch_size=256).astype(np.float64)
    return (out[1:] - out[:1]).reshape(size, -1), exported


def _check_layer(cls, c_in, c_out, k, s, padding, klip, seed=0, size=None, **kwargs):
    size = size or _size(k, s)
    model, layer = _trained(cls, c_in, c_out, k, s, padding, klip, size, seed=seed, **kwargs)
    input_shape = (size, size, c_in)
    matrix, exported = _exported_matrix(layer, input_shape)
    # Export parity on random inputs (bias and all).
    x = np.random.default_rng(seed + 1).normal(size=(4, *input_shape)).astype("float32")
    ours = model.predict(x, verbose=0)
    np.testing.assert_allclose(exported.predict(x, verbose=0), ours, atol=1e-5 * max(1.0, np.abs(ours).max()))
    values = np.linalg.svd(matrix, compute_uv=False)
    exact = values.max()
    assert exact <= klip * (1 + TOL), (exact, klip)
    bound = layer.lipschitz_constant()
    assert bound >= exact * (1 - 1e-6) and abs(bound - exact) <= 1e-5 * klip, (bound, exact)
    assert model_lipschitz_bound(model) >= exact * (1 - 1e-6)
    if padding == "circular":
        # Every singular value is k: the operator P = matrix^T is an isometry (P^T P = k^2 I) when it has at least
        # as many outputs as inputs, a co-isometry (P P^T = k^2 I) otherwise.
        n_in, n_out = matrix.shape
        gram = matrix @ matrix.T if n_in <= n_out else matrix.T @ matrix
        np.testing.assert_allclose(gram, klip**2 * np.eye(min(n_in, n_out)), atol=2 * TOL * klip**2)
        assert np.abs(values[: min(n_in, n_out)] - klip).max() <= TOL * klip
        low, high = layer.lipschitz_sv()
        assert abs(low - values[: min(n_in, n_out)].min()) <= 1e-5 * klip and abs(high - exact) <= 1e-5 * klip
    return layer, matrix


# (c_in, c_out, kernel, stride, padding, k): both channel directions, kernel > stride, every padding.
CONV_CASES = [
    (1, 8, 3, 1, "circular", 1.0),
    (16, 3, 3, 2, "circular", 5.0),
    (2, 64, 2, 2, "circular", 1.0),
    (64, 2, 1, 1, "circular", 0.5),
    (8, 8, 3, 2, "same", 0.5),
    (4, 8, 5, 1, "valid", 5.0),
]
# c_in < c_out with kernel > stride is the case orthogonium's PRs #1/#2 fixed for transposed layers.
TRANSPOSED_CASES = [
    (3, 16, 3, 2, "circular", 1.0),
    (16, 3, 3, 2, "circular", 5.0),
    (4, 4, 5, 2, "circular", 0.5),
    (8, 8, 3, 2, "same", 0.5),
    (4, 8, 5, 1, "valid", 5.0),
]


@pytest.mark.parametrize("c_in, c_out, k, s, padding, klip", CONV_CASES)
def test_conv_is_orthogonal_after_adam_steps(c_in, c_out, k, s, padding, klip):
    layer, _ = _check_layer(lip.AOCConv2D, c_in, c_out, k, s, padding, klip)
    assert layer.effective_kernel().shape == (k, k, c_in, c_out)
    assert layer.vanilla_export()[-1].strides == (s, s)


@pytest.mark.parametrize("c_in, c_out, k, s, padding, klip", TRANSPOSED_CASES)
def test_transposed_is_orthogonal_after_adam_steps(c_in, c_out, k, s, padding, klip):
    layer, matrix = _check_layer(lip.AOCConv2DTranspose, c_in, c_out, k, s, padding, klip)
    # The transposed layer is exactly the adjoint of the strided conv with its kernel on the output space.
    out_shape = layer.compute_output_shape((None, *layer.input_spatial_size, c_in))[1:]
    kernel = keras.ops.convert_to_numpy(layer.effective_kernel())
    np.testing.assert_allclose(matrix, conv_operator_matrix(kernel, out_shape, (s, s), padding).T, atol=1e-5)


SLOW_CASES = [
    (c_in, c_out, k, s, padding, klip)
    for (c_in, c_out), k, s, padding, klip in itertools.product(
        [(1, 3), (3, 1), (16, 64), (64, 16), (8, 8)], [1, 3, 5], [1, 2], ["circular", "same", "valid"], [0.5, 1.0, 5.0]
    )
    # One padding and one k per (channels, kernel, stride), rotating so every channel pair meets every padding.
    if k >= s
    and klip == (0.5, 1.0, 5.0)[(c_in + k + s) % 3]
    and padding == ("circular", "same", "valid")[(c_in + c_out + k + s) % 3]
]


@pytest.mark.slow
@pytest.mark.parametrize("cls", [lip.AOCConv2D, lip.AOCConv2DTranspose])
@pytest.mark.parametrize("c_in, c_out, k, s, padding, klip", SLOW_CASES)
def test_grid_orthogonal_after_adam_steps(cls, c_in, c_out, k, s, padding, klip):
    _check_layer(cls, c_in, c_out, k, s, padding, klip, seed=3)


@pytest.mark.parametrize(
    "c_in, c_out, padding, size", [(3, 8, "circular", 7), (8, 3, "circular", 6), (4, 4, "same", 6)]
)
def test_dilated_conv_is_orthogonal_at_every_size(c_in, c_out, padding, size):
    layer, _ = _check_layer(lip.AOCConv2D, c_in, c_out, 3, 1, padding, 1.0, size=size, dilation_rate=2)
    assert layer.vanilla_export()[-1].dilation_rate == (2, 2)


@pytest.mark.parametrize("c_in, c_out, k, s, groups", [(4, 8, 3, 2, 2), (12, 6, 3, 1, 3)])
def test_grouped_conv_is_orthogonal(c_in, c_out, k, s, groups):
    layer, _ = _check_layer(lip.AOCConv2D, c_in, c_out, k, s, "circular", 1.0, groups=groups)
    assert layer.effective_kernel().shape == (k, k, c_in // groups, c_out)
    assert layer.vanilla_export()[-1].groups == groups


def test_compose_conv_kernels_is_the_composition():
    rng = np.random.default_rng(0)
    first, second = rng.normal(size=(2, 3, 2, 4)).astype("float32"), rng.normal(size=(2, 2, 4, 3)).astype("float32")
    x = rng.normal(size=(1, 9, 10, 2)).astype("float32")
    two_steps = keras.ops.conv(keras.ops.conv(x, first, padding="valid"), second, strides=2, padding="valid")
    composed = compose_conv_kernels(first, second)
    assert composed.shape == (3, 4, 2, 3)
    one_step = keras.ops.conv(x, composed, strides=2, padding="valid")
    np.testing.assert_allclose(keras.ops.convert_to_numpy(one_step), keras.ops.convert_to_numpy(two_steps), atol=1e-5)


@pytest.mark.parametrize("padding", ["circular", "same", "valid"])
def test_strided_conv_norm_exact_and_large_input_bound(padding, monkeypatch):
    kernel = np.random.default_rng(1).normal(size=(3, 3, 2, 5))

    def exact(size):
        return np.linalg.svd(conv_operator_matrix(kernel, (size, size, 2), (2, 2), padding), compute_uv=False).max()

    assert abs(strided_conv_norm(kernel, (8, 8), (2, 2), padding) - exact(8)) <= 1e-9 * exact(8)
    # Above the dense-SVD size, zero padding gets the enclosing torus's norm: an upper bound, close for a random
    # kernel (circular stays exact). Lower the threshold to check it against the exact norm quickly.
    monkeypatch.setattr(spectrum, "MAX_DENSE_OPERATOR_SIZE", 100)
    bound = strided_conv_norm(kernel, (12, 12), (2, 2), padding)
    assert bound >= exact(12) * (1 - 1e-9) and bound <= 1.2 * exact(12)
    if padding == "circular":
        assert abs(bound - exact(12)) <= 1e-9 * bound


@pytest.mark.parametrize("padding", ["same", "valid", "circular"])
@pytest.mark.parametrize(
    "kernel_size, strides, size",
    [((3, 3), (2, 2), (12, 12)), ((4, 4), (2, 2), (13, 11)), ((5, 3), (3, 2), (15, 12)), ((2, 3), (1, 2), (10, 9))]
    + [((1, 1), (2, 2), (12, 12)), ((3, 3), (1, 1), (11, 11))],
)
def test_conv_sv_range_on_large_inputs_bounds_the_strided_conv_from_above_and_closely(
    padding, kernel_size, strides, size, monkeypatch
):
    # Every caller of conv_sv_range (library convolutions, stock Conv1D/Conv2D, utils, model bounds) gets the
    # polyphase bound of an enclosing circular conv above the dense-SVD size: checked against the SVD of the
    # real operator (built from impulses), with the size threshold lowered so that the SVD stays quick.
    # float32 weights, as layers have: the impulse responses are then these very values on every backend.
    kernel = (
        np.random.default_rng(sum(kernel_size) + 7 * strides[1]).normal(size=(*kernel_size, 2, 3)).astype("float32")
    )
    exact = np.linalg.svd(conv_operator_matrix(kernel, (*size, 2), strides, padding), compute_uv=False).max()
    monkeypatch.setattr(spectrum, "MAX_DENSE_OPERATOR_SIZE", 16)
    low, bound = spectrum.conv_sv_range(kernel, (*size, 2), strides, padding)
    assert 0.0 <= low <= bound and bound >= exact * (1 - 1e-9)
    divisible = all(n % s == 0 for n, s in zip(size, strides))
    if padding == "circular" and divisible:
        assert abs(bound - exact) <= 1e-9 * bound
    elif padding != "circular":
        assert bound <= 1.2 * exact


def test_lipschitz_constant_holds_on_random_pairs():
    model, layer = _trained(lip.AOCConv2D, 4, 6, 3, 2, "same", 5.0, 8)
    rng = np.random.default_rng(2)
    a, b = rng.normal(size=(2, 64, 8, 8, 4)).astype("float32")
    ratio = np.linalg.norm(to_numpy(model(a) - model(b)).reshape(64, -1), axis=1) / np.linalg.norm(
        (a - b).reshape(64, -1), axis=1
    )
    assert ratio.max() <= layer.lipschitz_constant() * (1 + 1e-5)


def test_keras_round_trip_and_config(tmp_path):
    for cls in (lip.AOCConv2D, lip.AOCConv2DTranspose):
        model, layer = _trained(cls, 3, 8, 3, 2, "circular", 0.5, 8)
        path = tmp_path / f"{cls.__name__}.keras"
        model.save(path)
        loaded = keras.saving.load_model(path)
        x = np.random.default_rng(0).normal(size=(2, 8, 8, 3)).astype("float32")
        np.testing.assert_allclose(loaded.predict(x, verbose=0), model.predict(x, verbose=0), atol=1e-6)
        config = layer.get_config()
        assert config["k_coef_lip"] == 0.5 and config["strides"] == (2, 2) and config["bjorck_iterations"] == 20
        assert config["padding"] == "circular" and config["filters"] == 8
        clone = cls.from_config(config)
        assert clone.get_config() == config


def test_condense_keeps_the_function():
    model, layer = _trained(lip.AOCConv2D, 4, 4, 3, 1, "circular", 1.0, 6)
    x = np.random.default_rng(0).normal(size=(2, 6, 6, 4)).astype("float32")
    before = model.predict(x, verbose=0)
    layer.condense()
    np.testing.assert_allclose(model.predict(x, verbose=0), before, atol=1e-5)


@pytest.mark.parametrize(
    "cls, kwargs, match",
    [
        (lip.AOCConv2D, {"kernel_size": 1, "strides": 2}, "must be >= strides"),
        (lip.AOCConv2D, {"kernel_size": 3, "dilation_rate": 2, "strides": 2}, "dilation_rate"),
        (lip.AOCConv2DTranspose, {"kernel_size": 3, "dilation_rate": 2}, "dilation_rate"),
        (lip.AOCConv2D, {"kernel_size": 3, "groups": 3}, "divisible by groups"),
        (lip.AOCConv2D, {"kernel_size": 3, "groups": 0}, "groups"),
        (lip.AOCConv2D, {"kernel_size": 3, "padding": "reflect"}, "padding"),
        (lip.AOCConv2D, {"kernel_size": 3, "bjorck_iterations": 0}, "bjorck_iterations"),
        (lip.AOCConv2D, {"kernel_size": 3, "k_coef_lip": -1.0}, "k_coef_lip"),
        (lip.AOCConv2DTranspose, {"kernel_size": 3, "output_padding": 1}, "output_padding"),
        (lip.AOCConv2DTranspose, {"kernel_size": 3, "groups": 4}, "groups"),
    ],
)
def test_construction_errors(cls, kwargs, match):
    with pytest.raises(ValueError, match=match):
        cls(4, **kwargs)


@pytest.mark.parametrize(
    "cls, kwargs, input_shape, match",
    [
        (lip.AOCConv2D, {"strides": 2}, (None, 7, 8, 3), "divisible"),
        (lip.AOCConv2D, {}, (None, None, 8, 3), "known spatial"),
        (lip.AOCConv2D, {"kernel_size": 5}, (None, 1, 1, 3), "too large"),
        (lip.AOCConv2D, {"dilation_rate": 3}, (None, 2, 2, 3), r"\(dilated: \(7, 7\)\) is too large"),
        (lip.AOCConv2D, {"groups": 2}, (None, 4, 4, 3), "divisible by groups"),
        (lip.AOCConv2D, {"padding": "valid"}, (None, 2, 8, 3), "at least kernel_size"),
        (lip.AOCConv2DTranspose, {"kernel_size": 5}, (None, 1, 1, 3), "too large"),
    ],
)
def test_build_errors(cls, kwargs, input_shape, match):
    kwargs = {"kernel_size": 3, **kwargs}
    with pytest.raises(ValueError, match=match):
        cls(4, **kwargs).build(input_shape)


def test_compute_layer_sv_describes_transposed_and_dilated_aoc_layers():
    """The (min, max) range of compute_layer_sv is the layer's own operator's, not a plain strided conv's."""
    from deel_lip_ext.utils import compute_layer_sv, layer_singular_values

    cases = [
        (lip.AOCConv2DTranspose(4, 3, strides=2, padding="circular"), (1, 4, 4, 2)),
        (lip.AOCConv2D(3, 3, dilation_rate=2, padding="circular"), (1, 8, 8, 3)),
        (lip.AOCConv2D(4, 3, groups=2, padding="same"), (1, 6, 6, 4)),
    ]
    for layer, shape in cases:
        layer(np.zeros(shape, "float32"))
        low, high = compute_layer_sv(layer, shape)
        matrix = _exported_matrix(layer, shape[1:])[0]
        exact = np.linalg.svd(matrix, compute_uv=False)
        assert high >= exact.max() * (1 - 1e-5), layer.name
        assert high <= exact.max() * (1 + 1e-5) or layer.padding != "circular", layer.name
        assert low <= exact[: min(matrix.shape)].min() + 1e-5, layer.name
        with pytest.raises(ValueError, match="no full spectrum"):
            layer_singular_values(layer, shape)
