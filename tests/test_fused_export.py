"""`vanilla_export` fuses a GroupSort2 used only by an L2-norm pooling into one GroupSort2L2NormPooling2D.

The fused layer must compute exactly what the two layers compute, keep the two layers' Lipschitz
constants (L2 and l_inf), survive a `.keras` round trip, and be used only where it is the same
function: never when the sort's output is read elsewhere.
"""

import keras
import numpy as np
import pytest
from _backend import assert_same_export, batch_jacobian, chained_model, to_numpy
from keras import ops

from deel_lip_ext import layers as lip
from deel_lip_ext.model import Model, Sequential
from deel_lip_ext.utils import model_lipschitz_bound


def _random(shape, seed=0):
    return np.random.default_rng(seed).normal(size=shape).astype("float32")


def _types(model):
    return [type(layer).__name__ for layer in model.layers]


@pytest.mark.parametrize("pool_size, size", [((2, 2), 8), ((3, 2), 7), (2, 5)])
@pytest.mark.parametrize("sort_k, pool_k, eps", [(1.0, 1.0, 1e-6), (0.7, 2.5, 0.3)])
def test_fused_layer_equals_groupsort2_then_l2_pooling(pool_size, size, sort_k, pool_k, eps):
    x = _random((4, size, size, 6))
    x[0, :2, :2, :2] = 0.5  # ties and a window of equal pairs
    separate = lip.ScaledL2NormPooling2D(pool_size, k_coef_lip=pool_k, eps_grad_sqrt=eps)(
        lip.GroupSort2(k_coef_lip=sort_k)(x)
    )
    fused = lip.GroupSort2L2NormPooling2D(pool_size, k_coef_lip=pool_k, eps_grad_sqrt=eps, sort_k_coef_lip=sort_k)
    np.testing.assert_allclose(to_numpy(fused(x)), to_numpy(separate), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("window_layout, shape", [("spatial", (4, 4, 4)), ("channels", (2, 2, 16))])
def test_fused_layer_is_as_lipschitz_as_the_two_layers(window_layout, shape):
    fused = lip.GroupSort2L2NormPooling2D((2, 2), k_coef_lip=1.5, sort_k_coef_lip=0.5, window_layout=window_layout)
    fused.build((None,) + shape)
    assert fused.lipschitz_constant("l2", (None,) + shape) == pytest.approx(0.75)
    assert fused.lipschitz_constant("linf", (None,) + shape) == pytest.approx(0.75 * 2.0)
    # The bound is attained: the Jacobian's largest singular value is 0.75 (pooling windows of norm >> eps).
    x = _random((3,) + shape, seed=1) + 3.0
    singular = np.linalg.svd(batch_jacobian(fused, x), compute_uv=False)
    assert singular.max() == pytest.approx(0.75, rel=1e-5)


def test_fused_layer_rejects_an_odd_channel_count():
    with pytest.raises(ValueError, match="even|divide"):
        lip.GroupSort2L2NormPooling2D()(np.zeros((1, 4, 4, 3), "float32"))


def _sequential():
    return Sequential(
        [
            keras.Input((9, 9, 2)),
            lip.SpectralConv2D(6, 3, padding="same"),
            lip.GroupSort2(),
            lip.ScaledL2NormPooling2D((2, 2), eps_grad_sqrt=0.1),
            lip.SpectralConv2D(4, 3, padding="same"),
            lip.GroupSort(n=2),
            lip.ScaledL2NormPooling2D((2, 2)),
            keras.layers.Flatten(),
            lip.SpectralDense(8),
            lip.GroupSort2(),
            lip.SpectralDense(3),
        ],
        k_coef_lip=3.0,
    )


def _functional(read_the_sort_again):
    inputs = keras.Input((8, 8, 2))
    sorted_ = lip.GroupSort2()(lip.SpectralConv2D(4, 3, padding="same")(inputs))
    pooled = keras.layers.Flatten()(lip.ScaledL2NormPooling2D()(sorted_))
    if read_the_sort_again:  # the sort's output is used twice: it must stay a layer of its own
        pooled = keras.layers.Concatenate()([pooled, keras.layers.Flatten()(lip.ScaledAveragePooling2D()(sorted_))])
    return Model(inputs, lip.SpectralDense(3)(pooled))


@pytest.mark.parametrize(
    "build, fused_count",
    [(_sequential, 2), (lambda: _functional(False), 1), (lambda: _functional(True), 0)],
    ids=["sequential", "functional", "sort_read_twice"],
)
def test_export_fuses_exactly_the_sorts_read_only_by_l2_pooling(build, fused_count, tmp_path):
    model = build()
    x = _random((5,) + tuple(model.input_shape[1:]), seed=2)
    plain = model.vanilla_export()
    types = _types(plain)
    assert types.count("GroupSort2L2NormPooling2D") == fused_count
    assert types.count("ScaledL2NormPooling2D") == (1 if fused_count == 0 else 0)
    assert_same_export(model, plain, x, tmp_path, bound_rel=1e-5)


def test_export_keeps_a_sort_that_is_a_model_output():
    inputs = keras.Input((4, 4, 2))
    sorted_ = lip.GroupSort2()(inputs)
    model = Model(inputs, [sorted_, lip.ScaledL2NormPooling2D()(sorted_)])
    assert "GroupSort2L2NormPooling2D" not in _types(model.vanilla_export())


def _as_halves(x):
    """Adjacent-pair channels (2i, 2i + 1) moved to (i, i + C/2)."""
    channels = x.shape[-1]
    return np.concatenate([x[..., 0:channels:2], x[..., 1:channels:2]], axis=-1)


@pytest.mark.parametrize("pool_size, size", [((2, 2), 8), ((3, 2), 7)])
@pytest.mark.parametrize("sort_k, pool_k, eps", [(1.0, 1.0, 1e-6), (0.7, 2.5, 0.3)])
def test_halves_layout_is_the_adjacent_layout_with_channels_reordered(pool_size, size, sort_k, pool_k, eps):
    x = _random((4, size, size, 8), seed=3)
    x[1, :3, :3, :] = 0.25  # ties
    arguments = dict(pool_size=pool_size, k_coef_lip=pool_k, eps_grad_sqrt=eps, sort_k_coef_lip=sort_k)
    adjacent = to_numpy(lip.GroupSort2L2NormPooling2D(**arguments)(x))
    halves = lip.GroupSort2L2NormPooling2D(**arguments, pair_layout="halves")
    np.testing.assert_allclose(to_numpy(halves(_as_halves(x))), _as_halves(adjacent), rtol=1e-6, atol=1e-6)
    # Sizes known only at run time take the unfused path: the same values.
    inputs = keras.Input((None, None, 8))
    dynamic = keras.Model(inputs, lip.GroupSort2L2NormPooling2D(**arguments, pair_layout="halves")(inputs))
    np.testing.assert_allclose(to_numpy(dynamic(_as_halves(x))), _as_halves(adjacent), rtol=1e-6, atol=1e-6)


def test_fused_layer_rejects_an_unknown_layout_and_a_partial_window():
    with pytest.raises(ValueError, match="pair_layout"):
        lip.GroupSort2L2NormPooling2D(pair_layout="interleaved")
    with pytest.raises(ValueError, match="window_layout"):
        lip.GroupSort2L2NormPooling2D(window_layout="rows")
    with pytest.raises(ValueError, match="window_layout='channels'.*divisible by the window area 4"):
        lip.GroupSort2L2NormPooling2D((2, 2), window_layout="channels").build((None, 3, 3, 6))


def _w1_like(consumer, functional=False):
    """Conv -> GroupSort2 -> L2 pooling -> `consumer` layers -> Flatten -> Dense."""
    layers = [
        lip.SpectralConv2D(8, 3, padding="same"),
        lip.GroupSort2(k_coef_lip=0.9),
        lip.ScaledL2NormPooling2D((2, 2), k_coef_lip=1.1),
        *consumer,
        keras.layers.Flatten(),
        lip.SpectralDense(5),
    ]
    return chained_model(keras.Input((10, 10, 3)), layers, functional)


def _layers(model):
    """The layers of `model` that compute (a functional model lists its InputLayer too)."""
    return [layer for layer in model.layers if not isinstance(layer, keras.layers.InputLayer)]


@pytest.mark.parametrize(
    "consumer, layouts",
    [
        (lambda: [], ["halves"]),  # Flatten + Dense reads the pooling
        (
            lambda: [lip.SpectralConv2D(6, 3, padding="circular"), lip.GroupSort2(), lip.ScaledL2NormPooling2D()],
            2 * ["halves"],
        ),
        (lambda: [keras.layers.ZeroPadding2D(1), lip.SpectralConv2D(4, 3, padding="valid")], ["halves"]),
        (lambda: [lip.PadConv2D(4, 3, padding="reflect")], ["halves"]),
        (lambda: [lip.GroupSort2()], ["adjacent"]),  # not linear: the pairs keep their places
        (lambda: [lip.ScaledL2NormPooling2D((1, 1))], ["adjacent"]),
    ],
    ids=["flatten_dense", "circular_conv", "zero_padding_conv", "reflect_conv", "sort", "pooling"],
)
@pytest.mark.parametrize("functional", [False, True], ids=["sequential", "functional"])
def test_export_reads_pairs_as_halves_between_linear_layers(consumer, layouts, functional, tmp_path):
    model = _w1_like(consumer(), functional)
    # Training steps move the kernels away from their initial values (any channel mix-up shows).
    model.compile(optimizer=keras.optimizers.Adam(0.05), loss="mse")
    x = _random((6,) + tuple(model.input_shape[1:]), seed=4)
    model.fit(x, _random((6, 5), seed=5), epochs=3, verbose=0)
    plain = model.vanilla_export()
    fused_layers = [layer for layer in plain.layers if isinstance(layer, lip.GroupSort2L2NormPooling2D)]
    assert [layer.pair_layout for layer in fused_layers] == layouts
    # Every layer of the export belongs to its graph alone: called once, its output a tensor of that graph.
    assert all(len(layer._inbound_nodes) == 1 for layer in plain.layers)
    assert plain.layers[-1].output is plain.outputs[0]
    assert_same_export(model, plain, x, tmp_path, bound_rel=1e-5)


def _windows_to_channels(x, pool_size):
    """(N, H, W, C) -> (N, H // ph, W // pw, ph * pw * C): window entry p of channel c at channel p * C + c."""
    (ph, pw), (n, height, width, channels) = pool_size, x.shape
    rows, columns = height // ph, width // pw
    windows = x[:, : rows * ph, : columns * pw].reshape(n, rows, ph, columns, pw, channels)
    return windows.transpose(0, 1, 3, 2, 4, 5).reshape(n, rows, columns, ph * pw * channels)


@pytest.mark.parametrize("pool_size, size", [((2, 2), 8), ((3, 2), 7)])
@pytest.mark.parametrize("pair_layout", ["adjacent", "halves"])
def test_channels_window_layout_is_the_spatial_layout_with_windows_moved(pool_size, size, pair_layout):
    x = _random((4, size, size, 6), seed=6)
    x[2, :3, :3, :] = -0.5  # ties
    arguments = dict(pool_size=pool_size, k_coef_lip=1.7, eps_grad_sqrt=0.2, sort_k_coef_lip=0.8)
    spatial = to_numpy(lip.GroupSort2L2NormPooling2D(**arguments, pair_layout=pair_layout)(x))
    channels = lip.GroupSort2L2NormPooling2D(**arguments, pair_layout=pair_layout, window_layout="channels")
    windows = _windows_to_channels(x, pool_size)
    np.testing.assert_allclose(to_numpy(channels(windows)), spatial, rtol=1e-6, atol=1e-6)
    assert channels.compute_output_shape(windows.shape) == spatial.shape
    inputs = keras.Input((None, None, windows.shape[-1]))  # sizes known only at run time
    dynamic = keras.Model(inputs, channels(inputs))
    np.testing.assert_allclose(to_numpy(dynamic(windows)), spatial, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("policy, tolerance", [("mixed_float16", 1e-2), ("mixed_bfloat16", 8e-2)])
def test_channels_window_layout_under_mixed_precision(policy, tolerance):
    windows = _windows_to_channels(_random((3, 6, 6, 4), seed=10), (2, 2))
    reference = lip.GroupSort2L2NormPooling2D(window_layout="channels", pair_layout="halves")(windows)
    mixed = lip.GroupSort2L2NormPooling2D(window_layout="channels", pair_layout="halves", dtype=policy)
    outputs = mixed(windows)
    assert keras.backend.standardize_dtype(outputs.dtype) == policy.split("_")[1]
    mixed_values = to_numpy(ops.cast(outputs, "float32"))
    np.testing.assert_allclose(mixed_values, to_numpy(reference), rtol=tolerance, atol=tolerance)


def _one_channel_net(size, channels, filters, kernel_size, padding, pool_size, followed_by_conv, functional):
    """A Lipschitz conv (`filters`, `kernel_size`) -> GroupSort2 -> L2 pooling -> [conv] -> Flatten -> Dense."""
    layers = [
        lip.SpectralConv2D(filters, kernel_size, padding=padding),
        lip.GroupSort2(k_coef_lip=0.9),
        lip.ScaledL2NormPooling2D(pool_size, k_coef_lip=1.1),
        *([lip.SpectralConv2D(4, 3, padding="same")] if followed_by_conv else []),
        keras.layers.Flatten(),
        lip.SpectralDense(5),
    ]
    return chained_model(keras.Input(size + (channels,)), layers, functional)


@pytest.mark.parametrize(
    "size, channels, filters, kernel_size, padding, pool_size, followed_by_conv, rewritten",
    [
        ((8, 8), 1, 8, 3, "same", (2, 2), False, True),
        ((9, 8), 1, 8, 3, "same", (3, 2), False, True),  # 6 window entries x 8 filters = 48 channels
        ((9, 9), 1, 4, 3, "valid", (2, 2), False, True),  # 7 x 7 output: the last row and column are dropped
        ((8, 8), 1, 6, 3, "same", (2, 2), True, True),  # a convolution reads the halves
        ((8, 8), 1, 4, 2, "same", (2, 2), False, True),  # even kernel: padding after only
        ((10, 10), 1, 4, (5, 3), "same", (2, 2), False, True),
        ((9, 9), 1, 8, 3, "same", (2, 2), False, False),  # "same" on a size the windows do not tile
        ((8, 8), 2, 8, 3, "same", (2, 2), False, False),  # two input channels
        ((8, 8), 1, 32, 3, "same", (2, 2), False, False),  # 128 channels once rewritten
    ],
    ids=[
        "same", "windows_3x2", "valid_remainder", "then_conv", "even_kernel", "kernel_5x3",
        "same_remainder", "two_channels", "wide",
    ],
)  # fmt: skip
@pytest.mark.parametrize("functional", [False, True], ids=["sequential", "functional"])
def test_export_writes_windows_as_channels_for_one_channel_convolutions(
    size, channels, filters, kernel_size, padding, pool_size, followed_by_conv, rewritten, functional, tmp_path
):
    model = _one_channel_net(size, channels, filters, kernel_size, padding, pool_size, followed_by_conv, functional)
    model.compile(optimizer=keras.optimizers.Adam(0.05), loss="mse")
    x = _random((6,) + tuple(model.input_shape[1:]), seed=8)
    model.fit(x, _random((6, 5), seed=9), epochs=3, verbose=0)  # kernels away from their initial values
    plain = model.vanilla_export()
    conv, pooling = _layers(plain)[:2]
    assert isinstance(pooling, lip.GroupSort2L2NormPooling2D)
    assert pooling.window_layout == ("channels" if rewritten else "spatial")
    assert pooling.pair_layout == "halves"  # a linear layer reads it: both rewrites compose
    assert tuple(conv.strides) == (pool_size if rewritten else (1, 1))
    np.testing.assert_allclose(to_numpy(plain(x)), to_numpy(model(x)), atol=1e-5)
    # Exact layer norms on these sizes: the rewritten convolution has the norm of the original one
    # restricted to the outputs the pooling reads, equal when the windows tile the output.
    bound, plain_bound = model_lipschitz_bound(model), model_lipschitz_bound(plain)
    if padding == "same":
        assert plain_bound == pytest.approx(bound, rel=1e-5)
    else:
        assert plain_bound <= bound * (1 + 1e-6)
    singular = np.linalg.svd(batch_jacobian(plain, x[:2]), compute_uv=False)
    assert singular.max() <= plain_bound * (1 + 1e-5)
    assert model_lipschitz_bound(plain, "linf") == pytest.approx(model_lipschitz_bound(model, "linf"), rel=1e-5)
    path = tmp_path / "plain.keras"
    plain.save(path)
    np.testing.assert_allclose(to_numpy(keras.saving.load_model(path)(x)), to_numpy(plain(x)), atol=1e-6)


def _read_twice(which):
    """conv -> GroupSort2 -> L2 pooling -> Flatten -> Dense, with the conv's or the pooling's output read again."""
    inputs = keras.Input((8, 8, 1))
    convolved = lip.SpectralConv2D(4, 3, padding="same")(inputs)
    pooled = lip.ScaledL2NormPooling2D()(lip.GroupSort2()(convolved))
    flat = keras.layers.Flatten()(pooled)
    again = {"conv": convolved, "pooling": pooled}[which]
    other = keras.layers.Flatten()(lip.ScaledAveragePooling2D()(again))
    return Model(inputs, keras.layers.Concatenate()([lip.SpectralDense(3)(flat), other]))


@pytest.mark.parametrize(
    "which, layouts",
    [("conv", ("adjacent", "spatial")), ("pooling", ("adjacent", "channels"))],
)
def test_functional_export_keeps_the_channel_order_of_an_output_read_twice(which, layouts):
    # Permuting the channels of an output that another layer reads would change that layer's input: the
    # pairs stay adjacent. The windows move to the channels only where the convolution's output is read
    # by the pooling alone (the pooling's output is the same either way).
    model = _read_twice(which)
    model.compile(optimizer=keras.optimizers.Adam(0.05), loss="mse")
    x = _random((6, 8, 8, 1), seed=11)
    model.fit(x, _random((6,) + tuple(model.output_shape[1:]), seed=12), epochs=3, verbose=0)
    plain = model.vanilla_export()
    (pooling,) = [layer for layer in plain.layers if isinstance(layer, lip.GroupSort2L2NormPooling2D)]
    assert (pooling.pair_layout, pooling.window_layout) == layouts
    np.testing.assert_allclose(to_numpy(plain(x)), to_numpy(model(x)), atol=1e-5)
