"""l_inf-distance layers: forward and gradient against float64 references, chunking, init, mean shift,
l_inf Lipschitz property, serialization and export."""

import math

import keras
import numpy as np
import pytest
from _backend import compiled, float_eps, gradients, input_gradient, to_numpy
from keras import ops

from deel_lip_ext.layers import LInfDistConv2D, LInfDistDense, LogitScale
from deel_lip_ext.layers.linf import automatic_chunk_size, interval_distance_bounds, linf_distance, naive_distance
from deel_lip_ext.linf import set_p
from deel_lip_ext.model import vanilla_model
from deel_lip_ext.zoo import linf_dist_net

P_VALUES = [1.0, 2.0, 8.0, 100.0, 1000.0, math.inf]


def reference_distance(x, kernel, p):
    """float64 numpy ||x[b] - kernel[:, o]||_p (max-rescaled, so p = 1000 stays finite)."""
    diff = np.abs(x.astype(np.float64)[:, :, None] - kernel.astype(np.float64)[None])
    peak = diff.max(axis=1)
    if math.isinf(p):
        return peak
    return peak * ((diff / peak[:, None, :]) ** p).sum(axis=1) ** (1.0 / p)


def random_case(batch=6, inputs=11, units=13, scale=3.0, offset=10.0, seed=0):
    rng = np.random.default_rng(seed)
    x = (rng.normal(size=(batch, inputs)) * scale + offset).astype("float32")
    kernel = rng.normal(size=(inputs, units)).astype("float32")
    return x, kernel


def relative_error(actual, expected):
    return float(np.max(np.abs(np.asarray(actual, np.float64) - expected)) / np.max(np.abs(expected)))


@pytest.mark.parametrize("p", P_VALUES)
@pytest.mark.parametrize("dynamic", [False, True], ids=["python_p", "variable_p"])
def test_forward_matches_float64_reference(p, dynamic):
    x, kernel = random_case()
    expected = reference_distance(x, kernel, p)
    order = keras.Variable(p) if dynamic else p
    actual = ops.convert_to_numpy(linf_distance(x, kernel, order, chunk_size=4))
    assert np.all(np.isfinite(actual))
    assert relative_error(actual, expected) <= 1e-5


def test_large_p_is_finite_and_sandwiched_with_inputs_around_ten():
    x, kernel = random_case(batch=8, inputs=300, units=20, scale=1.0, offset=10.0)
    y1000 = ops.convert_to_numpy(linf_distance(x, kernel, 1000.0))
    y_inf = ops.convert_to_numpy(linf_distance(x, kernel, math.inf))
    assert np.all(np.isfinite(y1000))
    # ||d||_inf <= ||d||_p <= n ** (1 / p) ||d||_inf
    assert np.all(y1000 >= y_inf * (1 - 1e-6))
    assert np.all(y1000 <= y_inf * 300 ** (1 / 1000) * (1 + 1e-6))
    # The unscaled formula overflows float32 here: the rescaling is what keeps it finite.
    with np.errstate(over="ignore"):
        assert not np.all(np.isfinite(np.sum(np.abs(x[:, :, None] - kernel[None]) ** np.float32(1000), axis=1)))


@pytest.mark.parametrize("p", [1.0, 2.0, 8.0, 8.5, 100.0, 1000.0, math.inf])
@pytest.mark.parametrize("dynamic", [False, True], ids=["python_p", "variable_p"])
def test_custom_gradient_matches_autodiff_of_naive_reference(p, dynamic):
    x, kernel = random_case(offset=0.0)
    upstream = np.random.default_rng(1).normal(size=(6, 13))
    order = keras.Variable(p) if dynamic else p
    chunked = gradients(
        lambda a, b: linf_distance(a, b, order, chunk_size=4), x, kernel, upstream=upstream.astype("float32")
    )
    # The reference is the naive broadcast with plain autodiff, in float64.
    naive = gradients(
        lambda a, b: naive_distance(ops.cast(a, "float64"), ops.cast(b, "float64"), p), x, kernel, upstream=upstream
    )
    # Where float64 is not computed (JAX without x64) the reference rounds |d| to float32 and raises
    # it to the power p - 1: a relative error of up to (p - 1) eps.
    reference_eps = float_eps(to_numpy(ops.cast(x, "float64")))
    tolerance = 1e-4 + (0.0 if math.isinf(p) else (p - 1) * reference_eps)
    for actual, expected in zip(chunked, naive):
        assert relative_error(actual, expected) <= tolerance


def test_gradient_at_p_inf_is_one_signed_entry_at_the_argmax():
    x, kernel = random_case(offset=0.0)
    for b, o in [(0, 0), (3, 7), (5, 12)]:
        upstream = np.zeros((6, 13), "float32")
        upstream[b, o] = 1.0
        grad = input_gradient(lambda inputs: linf_distance(inputs, kernel, math.inf, chunk_size=5), x, upstream)
        diff = x[b] - kernel[:, o]
        j = int(np.argmax(np.abs(diff)))
        expected = np.zeros_like(grad)
        expected[b, j] = np.sign(diff[j])
        np.testing.assert_array_equal(grad, expected)


def linf_distance_full(p):
    return lambda a, b: linf_distance(a, b, p, chunk_size=23)


@pytest.mark.parametrize("p", [2.0, 8.0, 8.5, math.inf])
def test_chunked_and_unchunked_agree(p):
    x, kernel = random_case(batch=7, inputs=9, units=23)
    upstream = np.random.default_rng(2).normal(size=(7, 23)).astype("float32")
    results = {}
    for chunk_size in (23, 5, 1):  # one chunk; padded last chunk; one unit at a time
        fn = lambda a, b, c=chunk_size: linf_distance(a, b, p, chunk_size=c)  # noqa: E731
        results[chunk_size] = [ops.convert_to_numpy(fn(x, kernel))] + gradients(fn, x, kernel, upstream=upstream)
    # Chunks change float32 rounding only: the order of the sums over units (input gradient) and over the
    # batch (kernel gradient), and the vectorized norms and powers of each term. Two orders of a sum of
    # terms T_u differ by at most 2 gamma_n sum_u |T_u| entrywise (gamma_n = n u / (1 - n u)); each term holds
    # (|d| / ||d||_p)^(p - 1), whose relative rounding is about p gamma_{inputs + 4} (the norm's sum of 9
    # terms, raised to the power p - 1; a sign alone at p = inf). T_u is the gradient through unit u alone.
    # Norm-wise: an entry much smaller than its row's terms carries their absolute rounding.
    unit_terms = [
        gradients(linf_distance_full(p), x, kernel, upstream=upstream * np.eye(23, dtype="float32")[u])
        for u in range(23)
    ]
    absolute_sums = [np.sum([np.abs(terms[i]) for terms in unit_terms], axis=0) for i in range(2)]

    def gamma(n):
        return n * 2.0**-24 / (1 - n * 2.0**-24)

    per_term = 0.0 if math.isinf(p) else p * gamma(9 + 4)
    for chunk_size in (5, 1):
        output, *grads = results[chunk_size]
        difference = np.linalg.norm(output.astype(np.float64) - results[23][0]) / np.linalg.norm(results[23][0])
        assert difference <= 1e-6  # the outputs: each unit's distance alone, no sum across units
        for actual, expected, absolute_sum in zip(grads, results[23][1:], absolute_sums):
            bound = 2 * (gamma(23 + 7) + per_term) * np.linalg.norm(absolute_sum)
            assert np.linalg.norm(actual.astype(np.float64) - expected) <= bound


@pytest.mark.parametrize(
    "rows, inputs, units",
    [(512, 784, 5120), (512, 784, 512), (512, 3072, 512), (4096, 27, 64), (8, 5, 7), (512, 784, 5123)],
)
def test_automatic_chunk_is_no_larger_than_the_output_or_the_minimum(rows, inputs, units):
    size = automatic_chunk_size(rows, inputs, units)
    assert 1 <= size <= units
    assert rows * size * inputs <= max(rows * units, 2**20) or size == 1
    # Not needlessly small: twice the size would break the budget (or the size is a divisor of units).
    assert 2 * rows * size * inputs > max(rows * units, 2**20) or size == units or units % size == 0


def test_automatic_chunk_prefers_a_divisor_of_units():
    assert automatic_chunk_size(512, 784, 5120) == 5  # budget 6, 5120 = 5 * 1024: no padded chunk
    assert automatic_chunk_size(512, 784, 5123) == 6  # 5123 is prime: pad rather than 1 unit per chunk


def test_interval_distance_bounds_contain_points_of_the_box():
    rng = np.random.default_rng(3)
    x, kernel = random_case(batch=4, inputs=6, units=5, offset=0.0)
    for p in (2.0, 8.0, math.inf):
        lower, upper = interval_distance_bounds(x - 0.5, x + 0.5, kernel, p, chunk_size=2)
        for _ in range(20):
            point = x + rng.uniform(-0.5, 0.5, size=x.shape).astype("float32")
            value = reference_distance(point, kernel, p)
            assert np.all(value >= ops.convert_to_numpy(lower) - 1e-5)
            assert np.all(value <= ops.convert_to_numpy(upper) + 1e-5)


def test_identity_init_argmax_is_unit_index_mod_inputs():
    inputs, units = 20, 64
    layer = LInfDistDense(units)
    x = np.random.default_rng(4).normal(size=(256, inputs)).astype("float32")
    y = ops.convert_to_numpy(layer(x, training=True))
    kernel = ops.convert_to_numpy(layer.kernel)
    argmax = np.argmax(np.abs(x[:, :, None] - kernel[None]), axis=1)
    assert np.mean(argmax == np.arange(units) % inputs) >= 0.99
    # After the mean shift the layer copies its input: unit i ~ x_(i mod d).
    for unit in range(units):
        assert np.corrcoef(y[:, unit], x[:, unit % inputs])[0, 1] > 0.99


def test_identity_init_is_skipped_when_inputs_exceed_units():
    layer = LInfDistDense(4)
    layer.build((None, 10))
    assert np.all(np.abs(ops.convert_to_numpy(layer.kernel)) < 9.0)


def test_running_mean_momentum_and_eval_equals_train_at_the_batch_mean():
    layer = LInfDistDense(8, momentum=0.9)
    x = np.random.default_rng(5).normal(size=(32, 5)).astype("float32")
    train_out = ops.convert_to_numpy(layer(x, training=True))
    raw = ops.convert_to_numpy(linf_distance(x, layer.kernel, math.inf))
    np.testing.assert_allclose(ops.convert_to_numpy(layer.moving_mean), 0.1 * raw.mean(axis=0), rtol=1e-5)
    np.testing.assert_allclose(train_out, raw - raw.mean(axis=0), rtol=1e-5, atol=1e-5)
    layer.moving_mean.assign(raw.mean(axis=0))
    np.testing.assert_allclose(ops.convert_to_numpy(layer(x, training=False)), train_out, rtol=1e-5, atol=1e-5)


def test_bias_negate_and_setting_p_reach_a_compiled_function():
    layer = LInfDistDense(3, mean_shift=False, use_bias=True, negate=True, p=8.0)
    x = np.random.default_rng(6).normal(size=(4, 7)).astype("float32")
    layer.build(x.shape)
    layer.bias.assign([1.0, 2.0, 3.0])
    function = compiled(lambda inputs: layer(inputs), layer.variables)
    kernel = ops.convert_to_numpy(layer.kernel)
    np.testing.assert_allclose(to_numpy(function(x)), -(reference_distance(x, kernel, 8.0) + [1, 2, 3]), rtol=1e-5)
    layer.p = "inf"
    assert layer.p == math.inf
    np.testing.assert_allclose(to_numpy(function(x)), -(reference_distance(x, kernel, math.inf) + [1, 2, 3]), rtol=1e-5)


def _lipschitz_net():
    model = linf_dist_net(depth=3, width=24, input_shape=(12,), num_classes=4, p=math.inf)
    data = np.random.default_rng(7).normal(size=(64, 12)).astype("float32")
    model.compile(keras.optimizers.Adam(0.05), loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit(data, np.arange(64) % 4, epochs=2, batch_size=16, verbose=0)  # a non-trivial running mean
    return model, data


def _worst_ratio(model, x, delta):
    change = np.max(np.abs(model.predict(x + delta, verbose=0) - model.predict(x, verbose=0)), axis=1)
    return change, np.max(np.abs(delta.reshape(len(x), -1)), axis=1)


def test_network_is_one_lipschitz_in_linf_for_random_and_adversarial_perturbations():
    model, _ = _lipschitz_net()
    rng = np.random.default_rng(8)
    x = rng.normal(size=(1000, 12)).astype("float32")
    delta = rng.uniform(-0.3, 0.3, size=x.shape).astype("float32")
    change, size = _worst_ratio(model, x, delta)
    assert np.all(change <= size * (1 + 1e-6) + 1e-5)

    # Gradient ascent on ||g(x + d) - g(x)||_inf within the l_inf ball (sign steps, as PGD).
    x = x[:64]
    reference = model(x, training=False)
    delta = rng.uniform(-0.01, 0.01, size=x.shape).astype("float32")

    def change_of(d):
        return ops.max(ops.abs(model(ops.add(x, d), training=False) - reference), axis=1)

    for _ in range(30):
        delta = np.clip(delta + 0.02 * np.sign(input_gradient(change_of, delta)), -0.3, 0.3)
    change, size = _worst_ratio(model, x, delta)
    assert np.all(change <= size * (1 + 1e-6) + 1e-5)
    assert np.max(change / size) > 0.5  # the attack found large changes: the bound is exercised


def test_finite_p_network_can_exceed_one_lipschitz():
    model, _ = _lipschitz_net()
    set_p(model, 2.0)
    x = np.random.default_rng(9).normal(size=(200, 12)).astype("float32")
    delta = 0.3 * np.sign(np.random.default_rng(10).normal(size=x.shape)).astype("float32")
    change, size = _worst_ratio(model, x, delta)
    assert np.max(change / size) > 1.0  # l_2 units are sqrt(12)-Lipschitz in l_inf


def reference_conv(x, kernel, strides, padding, p):
    kernel_height, kernel_width, channels, filters = kernel.shape
    if padding == "same":
        out_h, out_w = -(-x.shape[1] // strides), -(-x.shape[2] // strides)
        pad_h = max((out_h - 1) * strides + kernel_height - x.shape[1], 0)
        pad_w = max((out_w - 1) * strides + kernel_width - x.shape[2], 0)
        x = np.pad(x, ((0, 0), (pad_h // 2, pad_h - pad_h // 2), (pad_w // 2, pad_w - pad_w // 2), (0, 0)))
    out_h = (x.shape[1] - kernel_height) // strides + 1
    out_w = (x.shape[2] - kernel_width) // strides + 1
    out = np.zeros((x.shape[0], out_h, out_w, filters))
    for i in range(out_h):
        for j in range(out_w):
            patch = x[:, i * strides : i * strides + kernel_height, j * strides : j * strides + kernel_width, :]
            out[:, i, j, :] = reference_distance(patch.reshape(len(x), -1), kernel.reshape(-1, filters), p)
    return out


@pytest.mark.parametrize("padding,strides", [("valid", 1), ("same", 1), ("same", 2)])
@pytest.mark.parametrize("p", [8.0, math.inf])
def test_conv_matches_patchwise_reference(padding, strides, p):
    layer = LInfDistConv2D(5, 3, strides=strides, padding=padding, p=p, mean_shift=False)
    x = np.random.default_rng(11).normal(size=(2, 7, 6, 3)).astype("float32")
    y = ops.convert_to_numpy(layer(x))
    expected = reference_conv(x, ops.convert_to_numpy(layer.kernel), strides, padding, p)
    assert y.shape == expected.shape == tuple(layer.compute_output_shape(x.shape))
    assert relative_error(y, expected) <= 1e-5


def test_conv_identity_init_and_spatial_mean_shift():
    layer = LInfDistConv2D(6, 3, padding="same")
    x = np.random.default_rng(12).normal(size=(4, 5, 5, 2)).astype("float32")
    y = ops.convert_to_numpy(layer(x, training=True))
    kernel = ops.convert_to_numpy(layer.kernel)
    for unit in range(6):
        assert kernel[1, 1, unit % 2, unit] == -10.0
    assert np.sum(kernel == -10.0) == 6
    np.testing.assert_allclose(y.mean(axis=(0, 1, 2)), 0.0, atol=1e-4)
    assert np.corrcoef(y[..., 3].ravel(), x[..., 1].ravel())[0, 1] > 0.99


def test_conv_is_one_lipschitz_in_linf():
    layer = LInfDistConv2D(4, 3, padding="same", p=math.inf, mean_shift=False)
    rng = np.random.default_rng(13)
    x = rng.normal(size=(50, 6, 6, 2)).astype("float32")
    delta = rng.uniform(-0.2, 0.2, size=x.shape).astype("float32")
    change = np.abs(ops.convert_to_numpy(layer(x + delta)) - ops.convert_to_numpy(layer(x)))
    assert np.max(change) <= np.max(np.abs(delta)) * (1 + 1e-6) + 1e-5


@pytest.mark.parametrize(
    "factory,message",
    [
        (lambda: LInfDistDense(0), "units"),
        (lambda: LInfDistDense(4, p=0.5), "p must"),
        (lambda: LInfDistDense(4, p="two"), "p must"),
        (lambda: LInfDistDense(4, chunk_size=0), "chunk_size"),
        (lambda: LInfDistDense(4, momentum=1.0), "momentum"),
        (lambda: LInfDistDense(4, identity_value=-1.0), "identity_value"),
        (lambda: LInfDistConv2D(4, 3, padding="circular"), "padding"),
        (lambda: LInfDistConv2D(4, (3, 0)), "kernel_size"),
        (lambda: LogitScale(lr_multiplier=0.0), "lr_multiplier"),
    ],
)
def test_bad_arguments_raise_value_error_naming_them(factory, message):
    with pytest.raises(ValueError, match=message):
        factory()


def test_bad_flags_raise_type_error_and_bad_input_shape_value_error():
    with pytest.raises(TypeError, match="use_bias"):
        LInfDistDense(4, use_bias="yes")
    with pytest.raises(TypeError, match="mean_shift"):
        LInfDistDense(4, mean_shift=1)
    with pytest.raises(ValueError, match="batch, features"):
        LInfDistDense(4).build((None, 3, 3))
    layer = LInfDistDense(4)
    with pytest.raises(ValueError, match="p must"):
        layer.p = 0


def test_config_round_trip_keeps_current_p():
    for layer in (LInfDistDense(7, p=8.0, chunk_size=3, negate=True), LInfDistConv2D(5, (3, 2), strides=2)):
        layer.p = 100.0
        clone = layer.__class__.from_config(layer.get_config())
        assert clone.get_config() == layer.get_config()
        assert clone.p == 100.0
    layer = LInfDistDense(3)
    layer.p = math.inf
    assert LInfDistDense.from_config(layer.get_config()).p == math.inf


@pytest.mark.filterwarnings("ignore:Gradients do not exist")  # LogitScale's s only feeds the v2 loss
def test_keras_file_round_trip_and_export_keep_layer_p_and_running_mean(tmp_path):
    model = keras.Sequential(
        [
            keras.Input((6, 6, 1)),
            LInfDistConv2D(3, 3, p=8.0),
            keras.layers.Flatten(),
            LInfDistDense(10, p=8.0),
            LInfDistDense(4, mean_shift=False, negate=True, p=8.0),
            LogitScale(),
        ]
    )
    x = np.random.default_rng(14).normal(size=(16, 6, 6, 1)).astype("float32")
    model.compile("adam", loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit(x, np.arange(16) % 4, epochs=1, verbose=0)
    set_p(model, 50.0)
    expected = model.predict(x, verbose=0)

    path = tmp_path / "linf.keras"
    model.save(path)
    loaded = keras.models.load_model(path)
    np.testing.assert_allclose(loaded.predict(x, verbose=0), expected, rtol=1e-6)
    assert [layer.p for layer in loaded.layers if hasattr(layer, "p_variable")] == [50.0] * 3
    np.testing.assert_array_equal(
        ops.convert_to_numpy(loaded.layers[2].moving_mean), ops.convert_to_numpy(model.layers[2].moving_mean)
    )
    assert np.any(ops.convert_to_numpy(model.layers[2].moving_mean) != 0)

    exported = vanilla_model(model)
    assert [type(layer) for layer in exported.layers] == [type(layer) for layer in model.layers]
    assert all(new is not old for new, old in zip(exported.layers, model.layers))
    np.testing.assert_allclose(exported.predict(x, verbose=0), expected, rtol=1e-6)
    np.testing.assert_array_equal(
        ops.convert_to_numpy(exported.layers[2].moving_mean), ops.convert_to_numpy(model.layers[2].moving_mean)
    )


def test_logit_scale_is_identity_with_scaled_raw_weight():
    layer = LogitScale(initial_value=2.0, lr_multiplier=0.5)
    x = np.arange(6, dtype="float32").reshape(2, 3)
    np.testing.assert_array_equal(ops.convert_to_numpy(layer(x)), x)
    assert float(ops.convert_to_numpy(layer.raw_scale)) == 4.0
    assert float(ops.convert_to_numpy(layer.scale)) == 2.0
