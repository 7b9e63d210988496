"""PadConv2D, SpectralConv2DTranspose, SpectralConv1D (deel-lip / deel-torchlip parity layers).

The Lipschitz claim is checked on the *exported* stock Keras model: its
bias-free linear map is built from unit impulses and its exact largest
singular value compared with k. Kernels include adversarial ones (every tap
the same matrix: the sums over a window, and their copies through
reflect/symmetric/circular padding, add up coherently).
"""

import math

import keras
import numpy as np
import pytest

from deel_lip_ext.layers import (
    CircularPadding2D,
    PadConv2D,
    Padding2D,
    SpectralConv1D,
    SpectralConv2DTranspose,
)
from deel_lip_ext.parametrizations import axis_overlap_counts, max_overlap
from deel_lip_ext.model import vanilla_model

RTOL_LIP = 1e-3


def _numpy(tensor):
    return np.asarray(keras.ops.convert_to_numpy(tensor))


def _model(layer, input_shape):
    return keras.Sequential([keras.Input(input_shape), layer])


def _exported_norm(model):
    """Exact L2 operator norm of the exported model's bias-free map (impulse responses, float64 SVD)."""
    exported = vanilla_model(model)
    in_shape = tuple(model.inputs[0].shape[1:])
    size = int(np.prod(in_shape))
    impulses = np.eye(size, dtype="float32").reshape((size,) + in_shape)
    zero = _numpy(exported(np.zeros((1,) + in_shape, "float32")))
    matrix = (_numpy(exported(impulses)) - zero).reshape(size, -1).astype(np.float64)
    return float(np.linalg.norm(matrix, 2))


def _set_kernel(layer, kind, seed=0):
    shape = tuple(layer.kernel.shape)
    rng = np.random.default_rng(seed)
    if kind == "random":
        kernel = rng.normal(size=shape)
    else:  # "coherent": the same matrix at every tap
        tap = rng.normal(size=shape[-2:])
        kernel = np.broadcast_to(tap, shape).copy()
    layer.kernel.assign(kernel.astype("float32"))


def _strict(**kwargs):
    # Fixed, long iterations: the RKO kernel is orthonormal to float32 precision.
    return dict(eps_spectral=0, eps_bjorck=0, maxiter_spectral=50, maxiter_bjorck=40, **kwargs)


PAD_CASES = [
    # (c_in, c_out, kernel, stride, size)
    (1, 1, 3, 1, 5),
    (2, 3, 3, 1, 6),
    (3, 4, 3, 2, 7),
    (1, 2, 5, 1, 6),
    (2, 2, 5, 2, 8),
    (4, 2, 2, 1, 5),
    (1, 4, 4, 3, 9),
]


PAD_MODES = ["same", "valid", "constant", "reflect", "symmetric", "circular"]
# Every (padding, case) runs with one kernel kind in the fast suite, alternating, so every padding and every
# case meets both kinds there; the other kind of each pair runs with the slow tests (the full product in CI).
PAD_GRID = [
    pytest.param(padding, *case, kind, marks=[pytest.mark.slow] if (index + row + column) % 2 else [])
    for row, padding in enumerate(PAD_MODES)
    for index, case in enumerate(PAD_CASES)
    for column, kind in enumerate(["random", "coherent"])
]


@pytest.mark.parametrize("padding, c_in, c_out, kernel, stride, size, kind", PAD_GRID)
def test_pad_conv_exported_norm_at_most_k(padding, c_in, c_out, kernel, stride, size, kind):
    k = 1.0 if kind == "random" else 2.5
    layer = PadConv2D(c_out, kernel, strides=stride, padding=padding, k_coef_lip=k, **_strict())
    model = _model(layer, (size, size, c_in))
    _set_kernel(layer, kind)
    exact = _exported_norm(model)
    assert exact <= k * (1 + RTOL_LIP)
    assert layer.operator_norm((None, size, size, c_in)) == pytest.approx(exact, rel=1e-6, abs=1e-7)


@pytest.mark.parametrize(
    "c_in, c_out, kernel, stride, size",
    [(1, 1, 3, 1, 5), (2, 3, 3, 2, 4), (3, 2, 4, 2, 5), (1, 2, 5, 1, 3), (4, 4, 2, 2, 4), (2, 1, 5, 3, 3)],
)
@pytest.mark.parametrize("kind", ["random", "coherent"])
def test_conv_transpose_exported_norm_at_most_k(c_in, c_out, kernel, stride, size, kind):
    k = 1.0 if kind == "random" else 0.5
    layer = SpectralConv2DTranspose(c_out, kernel, strides=stride, k_coef_lip=k, **_strict())
    model = _model(layer, (size, size, c_in))
    _set_kernel(layer, kind)
    exact = _exported_norm(model)
    assert exact <= k * (1 + RTOL_LIP)
    assert layer.operator_norm((None, size, size, c_in)) == pytest.approx(exact, rel=1e-6, abs=1e-7)


@pytest.mark.parametrize("padding", ["same", "valid"])
@pytest.mark.parametrize(
    "c_in, c_out, kernel, stride, size",
    [(1, 1, 3, 1, 8), (3, 5, 3, 2, 9), (2, 2, 5, 1, 12), (4, 1, 4, 3, 10), (1, 6, 1, 1, 5)],
)
@pytest.mark.parametrize("kind", ["random", "coherent"])
def test_conv1d_exported_norm_at_most_k(padding, c_in, c_out, kernel, stride, size, kind):
    k = 1.0 if kind == "random" else 3.0
    layer = SpectralConv1D(c_out, kernel, strides=stride, padding=padding, k_coef_lip=k, **_strict())
    model = _model(layer, (size, c_in))
    _set_kernel(layer, kind)
    exact = _exported_norm(model)
    assert exact <= k * (1 + RTOL_LIP)
    assert layer.operator_norm((None, size, c_in)) == pytest.approx(exact, rel=1e-6, abs=1e-7)


def test_coherent_kernel_reaches_the_bound_for_stride_one_same_padding():
    # Same 1x1-channel tap everywhere: an interior impulse spreads over k*k outputs, the bound is tight there.
    layer = SpectralConv1D(1, 3, padding="same", **_strict())
    model = _model(layer, (32, 1))
    _set_kernel(layer, "coherent")
    assert _exported_norm(model) == pytest.approx(1.0, abs=1e-2)


def test_reflect_padding_needs_its_own_factor():
    # With the zero-padding factor 1/sqrt(ceil(k/s)^2), the coherent kernel exceeds 1 under reflect padding
    # (pixel 1 is read 4 times by a 3-tap kernel): the copies must be counted, deel-lip's factor ignores them.
    # (Symmetric and circular padding at stride 1 read every pixel exactly k times: the factors agree there.)
    layer = PadConv2D(1, 3, padding="reflect", **_strict())
    model = _model(layer, (4, 4, 1))
    _set_kernel(layer, "coherent")
    zero_factor = 1.0 / math.sqrt(max_overlap((4, 4), (3, 3), (1, 1), "same"))
    ratio = zero_factor / layer.lipschitz_coefficient
    assert ratio > 1
    assert _exported_norm(model) * ratio > 1 + 1e-3


def test_overlap_counts_against_explicit_padding():
    # Counts from the padded index map, checked by brute force on the padded signal of an index vector.
    for mode, np_mode in (("reflect", "reflect"), ("symmetric", "symmetric"), ("circular", "wrap")):
        for size, kernel, stride in ((5, 3, 1), (6, 4, 2), (7, 5, 3), (3, 3, 1)):
            before, after = kernel // 2, kernel - 1 - kernel // 2
            padded = np.pad(np.arange(size), (before, after), mode=np_mode)
            windows = [padded[o : o + kernel] for o in range(0, len(padded) - kernel + 1, stride)]
            expected = np.bincount(np.concatenate(windows), minlength=size)
            np.testing.assert_array_equal(axis_overlap_counts(size, kernel, stride, mode), expected)


@pytest.mark.parametrize(
    "make, shape",
    [
        (lambda: PadConv2D(4, 3, padding="reflect", k_coef_lip=2.0), (6, 6, 3)),
        (lambda: PadConv2D(4, 3, strides=2, padding="circular"), (7, 7, 2)),
        (lambda: PadConv2D(3, 5, padding="symmetric", activation="relu"), (5, 5, 2)),
        (lambda: PadConv2D(4, 3, strides=2, padding="same"), (7, 7, 2)),
        (lambda: PadConv2D(2, 3, padding="constant", use_bias=False), (6, 5, 2)),
        (lambda: SpectralConv2DTranspose(4, 3, strides=2, activation="relu"), (5, 5, 3)),
        (lambda: SpectralConv2DTranspose(2, 4, strides=(1, 2), use_bias=False), (4, 5, 3)),
        (lambda: SpectralConv1D(4, 3, strides=2, k_coef_lip=0.5), (11, 3)),
        (lambda: SpectralConv1D(4, 5, padding="valid"), (11, 3)),
    ],
)
def test_export_parity_training_and_keras_round_trip(make, shape, tmp_path):
    layer = make()
    model = _model(layer, shape)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(8,) + shape).astype("float32")
    y = rng.normal(size=(8,) + tuple(model.outputs[0].shape[1:])).astype("float32")
    model.compile(keras.optimizers.Adam(1e-2), "mse")
    model.fit(x, y, epochs=2, batch_size=4, verbose=0)
    out = _numpy(model(x))
    exported = vanilla_model(model)
    np.testing.assert_allclose(_numpy(exported(x)), out, atol=1e-5)
    assert all(
        type(plain).__module__.startswith("keras") or isinstance(plain, (Padding2D, CircularPadding2D))
        for plain in exported.layers
    )
    path = tmp_path / "model.keras"
    model.save(path)
    loaded = keras.saving.load_model(path)
    np.testing.assert_allclose(_numpy(loaded(x)), out, atol=1e-6)
    assert loaded.layers[0].get_config() == layer.get_config()
    exported_path = tmp_path / "exported.keras"
    exported.save(exported_path)
    np.testing.assert_allclose(_numpy(keras.saving.load_model(exported_path)(x)), out, atol=1e-5)


def test_operator_norm_bound_on_large_inputs_is_an_upper_bound():
    layer = PadConv2D(3, 3, padding="reflect", **_strict())
    _model(layer, (40, 40, 2))
    _set_kernel(layer, "coherent")
    bound = layer.operator_norm((None, 40, 40, 2))  # 3200 entries: the bound path
    small = PadConv2D(3, 3, padding="reflect", **_strict())
    _model(small, (6, 6, 2))
    small.kernel.assign(layer.kernel)
    exact_small = small.operator_norm((None, 6, 6, 2))
    # Same kernel matrix (RKO does not depend on the size): the bound is ||M|| sqrt(overlap at 40x40).
    matrix = _numpy(layer.effective_kernel()).reshape(-1, 3).astype(np.float64)
    expected = np.linalg.norm(matrix, 2) * math.sqrt(max_overlap((40, 40), (3, 3), (1, 1), "reflect"))
    assert bound == pytest.approx(expected, rel=1e-9)
    assert bound <= 1.0 + RTOL_LIP and exact_small <= 1.0 + RTOL_LIP


def test_copying_padding_pins_the_input_size():
    layer = PadConv2D(2, 3, padding="reflect")
    _model(layer, (6, 6, 1))
    with pytest.raises(ValueError):
        layer(np.zeros((1, 8, 8, 1), "float32"))
    with pytest.raises(ValueError, match="built for spatial size"):
        layer.operator_norm((None, 8, 8, 1))
    # Zero padding is size-independent: other sizes are fine.
    free = PadConv2D(2, 3, padding="same")
    _model(free, (6, 6, 1))
    assert _numpy(free(np.zeros((1, 9, 9, 1), "float32"))).shape == (1, 9, 9, 2)


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda: PadConv2D(4, 3, padding="replicate"), "padding must be one of"),
        (lambda: PadConv2D(0, 3), "filters"),
        (lambda: PadConv2D(4, 3, dilation_rate=2), "dilation_rate"),
        (lambda: PadConv2D(4, 3, groups=2), "groups"),
        (lambda: PadConv2D(4, 3, data_format="channels_first"), "data_format"),
        (lambda: PadConv2D(4, 3, k_coef_lip=0.0), "k_coef_lip"),
        (lambda: PadConv2D(4, (3, 3, 3)), "kernel_size"),
        (lambda: SpectralConv2DTranspose(4, 3, padding="valid"), "padding must be one of"),
        (lambda: SpectralConv2DTranspose(4, 3, output_padding=1), "output_padding"),
        (lambda: SpectralConv2DTranspose(4, 3, dilation_rate=2), "dilation_rate"),
        (lambda: SpectralConv2DTranspose(4, 3, beta_bjorck=0.9), "beta_bjorck"),
        (lambda: SpectralConv1D(4, 3, padding="causal"), "padding must be one of"),
        (lambda: SpectralConv1D(4, 3, strides=0), "strides"),
    ],
)
def test_bad_arguments_are_rejected(make, match):
    with pytest.raises(ValueError, match=match):
        make()


def test_reflect_padding_larger_than_the_input_is_rejected():
    with pytest.raises(ValueError, match="too large for reflect"):
        _model(PadConv2D(2, 5, padding="reflect"), (2, 2, 1))
    with pytest.raises(ValueError, match="needs known spatial"):
        PadConv2D(2, 3, padding="symmetric").build((None, None, None, 1))


def test_padding2d_matches_numpy_pad():
    x = np.arange(2 * 4 * 5 * 3, dtype="float32").reshape(2, 4, 5, 3)
    for mode in ("constant", "reflect", "symmetric"):
        out = _numpy(Padding2D(((1, 2), (3, 0)), mode=mode)(x))
        np.testing.assert_array_equal(out, np.pad(x, ((0, 0), (1, 2), (3, 0), (0, 0)), mode=mode))
    with pytest.raises(ValueError, match="mode must be one of"):
        Padding2D(1, mode="wrap")


@pytest.mark.parametrize(
    "make, shape",
    [
        (lambda: PadConv2D(3, 3, padding="reflect", k_coef_lip=2.0), (5, 5, 2)),
        (lambda: SpectralConv2DTranspose(3, 3, strides=2, k_coef_lip=0.5), (4, 4, 2)),
        (lambda: SpectralConv1D(3, 3, strides=2), (9, 2)),
    ],
)
def test_library_measuring_tools_read_the_new_layers(make, shape):
    from deel_lip_ext.utils import compute_layer_sv, layer_singular_values, model_lipschitz_bound

    layer = make()
    model = _model(layer, shape)
    _set_kernel(layer, "coherent")
    exact = _exported_norm(model)
    low, high = compute_layer_sv(layer)
    assert high == pytest.approx(exact, rel=1e-6)
    assert 0.0 <= low <= high
    values = layer_singular_values(layer)
    assert values.max() == pytest.approx(exact, rel=1e-6) and values[min(np.prod(shape), values.size) - 1] >= 0
    assert model_lipschitz_bound(model) == pytest.approx(exact, rel=1e-6)
    assert high <= layer.k_coef_lip * (1 + RTOL_LIP)


def test_big_inputs_report_the_bound_and_refuse_an_exact_spectrum():
    from deel_lip_ext.utils import compute_layer_sv, layer_singular_values

    layer = SpectralConv1D(4, 3, **_strict())
    _model(layer, (1000, 4))  # 4000 entries
    low, high = compute_layer_sv(layer)
    assert low == 0.0 and high == pytest.approx(layer.operator_norm((None, 1000, 4)))
    assert high <= 1.0 + RTOL_LIP
    with pytest.raises(ValueError, match="too many for an exact spectrum"):
        layer_singular_values(layer)


@pytest.mark.parametrize("kind", ["random", "coherent"])
def test_operator_norm_bound_is_above_the_exact_norm_on_a_big_circular_input(kind):
    from deel_lip_ext.utils import conv_singular_values

    # 40 x 40 x 2 = 3200 entries: operator_norm takes its bound path; a circular stride-1 conv has its exact
    # norm from the FFT of its kernel (the wrap-around pads are (1, 1) for a 3x3 kernel, the FFT's convention).
    layer = PadConv2D(3, 3, padding="circular", k_coef_lip=1.5, **_strict())
    _model(layer, (40, 40, 2))
    _set_kernel(layer, kind)
    exact = float(conv_singular_values(layer.effective_kernel(), (40, 40)).max())
    bound = layer.operator_norm((None, 40, 40, 2))
    assert exact <= bound * (1 + 1e-6)
    assert bound <= 1.5 * (1 + RTOL_LIP)


def _impulse_matrix(model, shape):
    """Dense matrix (inputs, outputs) of a model's map minus its value at 0, from unit impulses."""
    size = int(np.prod(shape))
    impulses = np.eye(size, dtype="float32").reshape((size, *shape))
    zero = model.predict(np.zeros((1, *shape), "float32"), verbose=0).reshape(1, -1)
    return (model.predict(impulses, verbose=0).reshape(size, -1) - zero).astype(np.float64)


@pytest.mark.parametrize("mode", ["constant", "reflect", "symmetric"])
@pytest.mark.parametrize(
    "padding, shape", [(((2, 1), (1, 3)), (5, 4, 1)), (1, (2, 3, 2)), (((0, 2), (2, 2)), (3, 3, 1))]
)
def test_padding2d_constant_is_the_exact_norm(mode, padding, shape):
    from deel_lip_ext.utils import model_lipschitz_bound

    layer = Padding2D(padding, mode=mode)
    model = keras.Sequential([keras.Input(shape), layer])
    matrix = _impulse_matrix(model, shape)
    exact = np.linalg.norm(matrix, 2)
    assert layer.lipschitz_constant("l2") == pytest.approx(exact, rel=1e-6)
    assert model_lipschitz_bound(model) == pytest.approx(exact, rel=1e-6)
    # Any size: an upper bound; l_inf: copies do not grow the max.
    assert layer.lipschitz_constant("l2", (None, None, None, shape[-1])) >= exact * (1 - 1e-6)
    assert layer.lipschitz_constant("linf") == pytest.approx(np.abs(matrix).sum(axis=0).max())


@pytest.mark.parametrize("mode", ["constant", "reflect", "symmetric"])
@pytest.mark.parametrize("strides", [1, 2])
def test_graph_walk_fuses_an_exported_padding_and_valid_conv(mode, strides):
    from deel_lip_ext.spectrum import padded_conv_norm
    from deel_lip_ext.utils import model_lipschitz_bound

    shape = (6, 5, 2)
    conv = keras.layers.Conv2D(3, 3, strides=strides, padding="valid", kernel_initializer="glorot_normal")
    pad = Padding2D(((1, 2), (2, 0)), mode=mode)
    model = keras.Sequential([keras.Input(shape), pad, conv])
    exact = np.linalg.norm(_impulse_matrix(model, shape), 2)
    assert model_lipschitz_bound(model) == pytest.approx(exact, rel=1e-5)
    # The bound of big inputs (patch norm times sqrt of the reads of an entry) is above the exact norm.
    assert padded_conv_norm(conv.kernel, (60, 60, 2), pad.padding, mode, conv.strides) >= (
        padded_conv_norm(conv.kernel, (20, 20, 2), pad.padding, mode, conv.strides) * (1 - 1e-6)
    )
    assert padded_conv_norm(conv.kernel, (60, 60, 2), pad.padding, mode, conv.strides) >= exact * (1 - 1e-6)


@pytest.mark.parametrize(
    "make, shape",
    [
        (lambda: keras.layers.Conv2DTranspose(2, 3, strides=2, padding="same"), (5, 4, 3)),
        (lambda: keras.layers.Conv2DTranspose(2, (2, 3), strides=(1, 2), padding="valid"), (4, 4, 2)),
        (lambda: keras.layers.Conv1D(2, 3, strides=2, padding="same"), (9, 3)),
        (lambda: keras.layers.Conv1D(3, 4, padding="valid"), (9, 2)),
        (lambda: keras.layers.Conv1D(2, 3, strides=2, padding="causal"), (9, 3)),
    ],
)
def test_stock_transposed_and_1d_convs_are_bounded_exactly(make, shape):
    from deel_lip_ext.utils import layer_lipschitz_constant, model_lipschitz_bound

    layer = make()
    model = keras.Sequential([keras.Input(shape), layer])
    layer.kernel.assign(np.random.default_rng(3).normal(size=layer.kernel.shape).astype("float32"))
    matrix = _impulse_matrix(model, shape)
    assert model_lipschitz_bound(model) == pytest.approx(np.linalg.norm(matrix, 2), rel=1e-5)
    # l_inf: the largest absolute row sum of the operator (output entries), here reached by an interior entry.
    assert model_lipschitz_bound(model, "linf") == pytest.approx(np.abs(matrix).sum(axis=0).max(), rel=1e-5)
    # Any size (batch and spatial dimensions None): the size-independent bound is above the exact norm.
    any_size = (None,) * len(shape) + (shape[-1],)
    assert layer_lipschitz_constant(layer, "l2", any_size) >= np.linalg.norm(matrix, 2) * (1 - 1e-6)


def test_spectral_conv_transpose_linf_norm_is_the_row_sum_not_the_column_sum():
    from deel_lip_ext.spectrum import linf_kernel_norm

    layer = SpectralConv2DTranspose(3, 3, strides=2, k_coef_lip=2.0)
    model = _model(layer, (5, 5, 4))
    _set_kernel(layer, "random")
    matrix = _impulse_matrix(model, (5, 5, 4))
    exact = np.abs(matrix).sum(axis=0).max()
    assert layer.lipschitz_constant("linf") == pytest.approx(exact, rel=1e-5)
    assert linf_kernel_norm(layer.effective_kernel()) != pytest.approx(exact, rel=1e-3)


@pytest.mark.parametrize(
    "make, shape",
    [
        (lambda: PadConv2D(3, 3, padding="reflect", k_coef_lip=2.0), (5, 5, 2)),
        (lambda: PadConv2D(2, 3, strides=2, padding="circular"), (6, 6, 3)),
        (lambda: SpectralConv1D(3, 3, strides=2), (9, 2)),
    ],
)
def test_direct_spectral_convs_linf_norm_is_the_largest_row_sum(make, shape):
    layer = make()
    model = _model(layer, shape)
    _set_kernel(layer, "random")
    exact = np.abs(_impulse_matrix(model, shape)).sum(axis=0).max()
    # An upper bound (reflect/circular copies can only repeat a tap's input), reached by an interior output.
    assert layer.lipschitz_constant("linf") == pytest.approx(exact, rel=1e-5)
