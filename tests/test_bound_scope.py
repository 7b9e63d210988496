"""What a bound describes: the function that runs (overridden `call`s, chains for IBP, input sizes, dtypes).

Companion of tests/test_audit_soundness.py: these tests pin the exact behaviour chosen for each audit finding
(a clear refusal, or a bound / an interval propagation that still holds).
"""

import keras
import numpy as np
import pytest

from deel_lip_ext import layers as lip
from deel_lip_ext.interval import chain_layers, interval_bounds
from deel_lip_ext.linf import certify_ibp
from deel_lip_ext.model import Model, Sequential
from deel_lip_ext.utils import layer_lipschitz_constant, model_lipschitz_bound


# ---------------------------------------------------------------- overridden `call`


class _Louder(lip.SpectralDense):
    def call(self, inputs, training=None):
        return 10.0 * super().call(inputs, training=training)


class _LouderDeclared(_Louder):
    """Overrides `call` and declares the matching bound: trusted."""

    def _lipschitz_constant(self, norm, input_shape):
        return 10.0 * super()._lipschitz_constant(norm, input_shape)


class _Scaled(keras.Sequential):
    def call(self, inputs, training=None, mask=None):
        return 3.0 * super().call(inputs, training=training, mask=mask)


def test_library_layer_subclass_overriding_call_is_refused_with_its_name():
    layer = _Louder(3, name="louder")
    layer.build((None, 3))
    with pytest.raises(ValueError, match="'louder'.*overrides `call`"):
        layer.lipschitz_constant()
    with pytest.raises(ValueError, match="overrides `call`"):
        model_lipschitz_bound(keras.Sequential([keras.Input((3,)), _Louder(3)]))


def test_subclass_declaring_its_bound_with_its_call_is_trusted():
    layer = _LouderDeclared(3)
    layer.build((None, 3))
    impulses = keras.ops.convert_to_numpy(layer(np.eye(3, dtype="float32"))) - keras.ops.convert_to_numpy(
        layer(np.zeros((1, 3), "float32"))
    )
    assert layer.lipschitz_constant() >= np.linalg.norm(impulses, 2) * (1 - 1e-6)
    assert layer.lipschitz_constant() == pytest.approx(10.0, rel=1e-3)


@pytest.mark.parametrize("make", [lambda: _Scaled([keras.Input((3,)), keras.layers.Dense(3)])])
def test_model_overriding_call_is_refused_by_every_bound(make):
    model = make()
    with pytest.raises(ValueError, match="overrides `call`"):
        model_lipschitz_bound(model)
    with pytest.raises(ValueError, match="overrides `call`"):
        model_lipschitz_bound(model, "linf")
    with pytest.raises(ValueError, match="overrides `call`"):
        chain_layers(model)
    outer_input = keras.Input((3,))
    with pytest.raises(ValueError, match="overrides `call`"):  # nested in a plain model
        model_lipschitz_bound(keras.Model(outer_input, model(outer_input)))


def test_library_and_stock_model_classes_are_walked():
    seq = Sequential([keras.Input((3,)), lip.SpectralDense(3)])
    inputs = keras.Input((3,))
    functional = Model(inputs, lip.SpectralDense(3)(inputs))
    for model in (seq, functional, keras.Sequential([keras.Input((3,)), lip.SpectralDense(3)])):
        assert model_lipschitz_bound(model) == pytest.approx(1.0, abs=1e-3)


# ---------------------------------------------------------------- IBP on functional graphs


def _dense(units, seed):
    return keras.layers.Dense(units, kernel_initializer=keras.initializers.RandomNormal(0.0, 1.0, seed=seed))


def test_ibp_on_a_functional_chain_matches_the_sequential_one():
    first, second = _dense(4, 0), _dense(3, 1)
    inputs = keras.Input((2,))
    functional = keras.Model(inputs, second(keras.layers.ReLU()(first(inputs))))
    sequential = keras.Sequential([keras.Input((2,)), first, keras.layers.ReLU(), second])
    x = np.array([[0.3, -0.2], [1.0, 0.5]], "float32")
    low_f, high_f = interval_bounds(functional, x - 0.1, x + 0.1)
    low_s, high_s = interval_bounds(sequential, x - 0.1, x + 0.1)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(low_f), keras.ops.convert_to_numpy(low_s))
    np.testing.assert_allclose(keras.ops.convert_to_numpy(high_f), keras.ops.convert_to_numpy(high_s))
    logits = keras.ops.convert_to_numpy(functional(x))
    assert np.all(keras.ops.convert_to_numpy(low_f) <= logits) and np.all(logits <= keras.ops.convert_to_numpy(high_f))
    predicted = np.argmax(logits, axis=1)
    np.testing.assert_array_equal(
        certify_ibp(functional, x, predicted, 0.01, None, None), certify_ibp(sequential, x, predicted, 0.01, None, None)
    )


def test_ibp_refuses_a_branching_functional_model_clearly():
    inputs = keras.Input((2,))
    model = keras.Model(inputs, keras.layers.Add()([_dense(2, 0)(inputs), _dense(2, 1)(inputs)]))
    with pytest.raises(ValueError, match="chain"):
        certify_ibp(model, np.zeros((1, 2), "float32"), np.array([0]), 0.1, None, None)


def test_ibp_refuses_a_subclass_of_a_stock_layer():
    class Louder(keras.layers.Dense):
        def call(self, inputs):
            return 10.0 * super().call(inputs)

    model = keras.Sequential([keras.Input((2,)), Louder(2)])
    with pytest.raises(ValueError, match="no interval bounds"):
        interval_bounds(model, np.zeros((1, 2), "float32"), np.ones((1, 2), "float32"))


def test_layer_lipschitz_constant_of_a_nested_model_checks_its_call():
    model = _Scaled([keras.Input((3,)), keras.layers.Dense(3)])
    with pytest.raises(ValueError, match="overrides `call`"):
        layer_lipschitz_constant(model)


# ---------------------------------------------------------------- input sizes


def _conv_sequential(spatial):
    conv = keras.layers.Conv2D(1, 3, padding="same", use_bias=False, kernel_initializer="ones")
    return keras.Sequential([keras.Input((*spatial, 1)), conv])


def _l2_norm_at(model, size):
    eye = np.eye(size * size, dtype="float32").reshape(-1, size, size, 1)
    return np.linalg.norm(keras.ops.convert_to_numpy(model(eye)).reshape(size * size, -1), 2)


def test_a_bounded_sequential_refuses_another_size():
    model = _conv_sequential((3, 3))
    model(np.zeros((1, 9, 9, 1), "float32"))  # a bare keras.Sequential runs at 9x9 (Keras warns) ...
    bound = model_lipschitz_bound(model)
    assert bound >= _l2_norm_at(model, 3) * (1 - 1e-6)
    with pytest.raises(ValueError, match="incompatible"):  # ... until its bound pins its input shape
        model(np.zeros((1, 9, 9, 1), "float32"))


def test_a_sequential_of_any_size_is_bounded_at_every_size():
    model = _conv_sequential((None, None))
    bound = model_lipschitz_bound(model)
    for size in (3, 9):
        assert bound >= _l2_norm_at(model, size) * (1 - 1e-6)


def test_nested_fixed_size_model_is_pinned_by_the_outer_bound():
    inner = _conv_sequential((3, 3))
    outer_input = keras.Input((None, None, 1))
    model = keras.Model(outer_input, inner(outer_input))
    bound = model_lipschitz_bound(model)
    assert bound >= _l2_norm_at(model, 3) * (1 - 1e-6)
    with pytest.raises(ValueError):
        model(np.zeros((1, 9, 9, 1), "float32"))


def test_cpl_conv_is_pinned_to_its_build_size():
    layer = lip.CPLConv2D(2, 3, name="cpl")
    layer(np.zeros((1, 3, 3, 1), "float32"))
    with pytest.raises(ValueError, match="'cpl' was built for spatial size"):
        layer(np.zeros((1, 9, 9, 1), "float32"))
    with pytest.raises(ValueError, match="'cpl' was built for spatial size"):
        layer.lipschitz_constant("l2", (None, 9, 9, 1))
    assert layer.lipschitz_constant("l2", (None, 3, 3, 1)) >= 1.0


def test_certify_refuses_data_of_another_shape_even_with_a_given_constant():
    from deel_lip_ext.certification import certify

    model = keras.Sequential([keras.Input((3, 3, 1)), keras.layers.Flatten(), keras.layers.Dense(2)])
    x, y = np.zeros((4, 9, 9, 1), "float32"), np.zeros((4,), "int64")
    with pytest.raises(ValueError, match=r"do not match the input shape \(3, 3, 1\)"):
        certify(model, (x, y), 0.1, lip_const=1.0, verbose=False)


@pytest.mark.skipif(keras.backend.backend() != "tensorflow", reason="only TensorFlow traces unknown sizes")
@pytest.mark.parametrize("make", [lambda: lip.SpectralConv2D(2, 3, padding="circular"), lambda: lip.CPLConv2D(2, 3)])
def test_pinned_layer_asserts_its_size_at_run_time_under_a_relaxed_tf_function(make):
    import tensorflow as tf

    layer = make()
    layer(np.zeros((1, 3, 3, 1), "float32"))
    run = tf.function(lambda x: layer(x, training=False), input_signature=[tf.TensorSpec((None, None, None, 1))])
    x = np.random.default_rng(0).normal(size=(2, 3, 3, 1)).astype("float32")
    np.testing.assert_allclose(run(x).numpy(), keras.ops.convert_to_numpy(layer(x)), rtol=1e-5, atol=1e-6)
    with pytest.raises(tf.errors.InvalidArgumentError, match="built for spatial size"):
        run(np.zeros((1, 9, 9, 1), "float32"))


# ---------------------------------------------------------------- the stock table: layouts, quantization, dtypes


@pytest.mark.parametrize("data_format, shape", [("channels_first", (16, 2, 2)), ("channels_last", (2, 2, 16))])
def test_global_average_pooling_divides_by_the_spatial_size(data_format, shape):
    inputs = keras.Input(shape)
    model = keras.Model(inputs, keras.layers.GlobalAveragePooling2D(data_format=data_format)(inputs))
    assert model_lipschitz_bound(model) == pytest.approx(0.5)  # 1 / sqrt(2 * 2), exact


def test_quantized_layers_are_refused_by_name():
    inputs = keras.Input((4,))
    model = keras.Model(inputs, keras.layers.Dense(4, name="quantized_dense")(inputs))
    model.quantize("int8")
    with pytest.raises(ValueError, match="'quantized_dense'.*quantized"):
        model_lipschitz_bound(model)


def test_circular_padding_does_not_fuse_with_a_channels_first_conv():
    inputs = keras.Input((3, 3, 6))
    conv = keras.layers.Conv2D(2, 3, padding="valid", data_format="channels_first", name="cf_conv")
    model = keras.Model(inputs, conv(lip.CircularPadding2D(1)(inputs)))
    with pytest.raises(ValueError, match="'cf_conv'.*channels_last"):
        model_lipschitz_bound(model)


_ROUNDS_UP = 1.0 + 2.0**-8 + 2.0**-9  # bfloat16 rounds it to 1 + 2^-7


@pytest.fixture
def bfloat16_policy():
    keras.mixed_precision.set_global_policy("mixed_bfloat16")
    try:
        yield
    finally:
        keras.mixed_precision.set_global_policy("float32")


@pytest.mark.parametrize("kind", ["dense", "conv", "rescaling", "multiply", "divide"])
def test_bfloat16_bounds_use_the_rounded_weights_and_constants(bfloat16_policy, kind):
    inputs = keras.Input((1, 1, 1) if kind == "conv" else (1,))
    if kind in ("dense", "conv"):
        layer = keras.layers.Dense(1, use_bias=False) if kind == "dense" else keras.layers.Conv2D(1, 1, use_bias=False)
        outputs = layer(inputs)
        layer.kernel.assign(np.full(layer.kernel.shape, _ROUNDS_UP, "float32"))
    elif kind == "rescaling":
        outputs = keras.layers.Rescaling(_ROUNDS_UP)(inputs)
    elif kind == "multiply":
        outputs = keras.layers.Activation("linear")(inputs) * _ROUNDS_UP
    else:
        # 0.5 + 2^-11 rounds DOWN to 0.5 in bfloat16: the layer divides by 0.5 (slope 2, exact in bfloat16).
        outputs = keras.layers.Activation("linear")(inputs) / (0.5 + 2.0**-11)
    model = keras.Model(inputs, outputs)
    rounded = float(keras.ops.convert_to_numpy(keras.ops.cast(keras.ops.cast(_ROUNDS_UP, "bfloat16"), "float32")))
    assert rounded == 1.0 + 2.0**-7
    bound = model_lipschitz_bound(model)
    ones = np.ones((1, *inputs.shape[1:]), "float32")
    slope = float(np.asarray(keras.ops.convert_to_numpy(model(ones)), np.float64).reshape(-1)[0])
    assert bound >= slope * (1 - 1e-9)
    assert bound == pytest.approx(2.0 if kind == "divide" else rounded, rel=1e-9)


# ---------------------------------------------------------------- model.Sequential's warning


@pytest.mark.parametrize(
    "make, shape",
    [
        (
            lambda: lip.FrobeniusDense(5, name="suspect", kernel_initializer=keras.initializers.RandomNormal(seed=0)),
            (6,),
        ),
        (lambda: lip.SVCMConv2D(3, 3, name="suspect"), (4, 4, 2)),
        (lambda: lip.LiResNetBlock(3, name="suspect"), (4, 4, 2)),
    ],
)
def test_sequential_warns_for_layers_not_lipschitz_by_construction(make, shape):
    with pytest.warns(UserWarning, match="'suspect'"):
        Sequential([keras.Input(shape), make()])


def test_frobenius_dense_with_disjoint_neurons_is_not_1_lipschitz_as_a_whole():
    layer = lip.FrobeniusDense(5, kernel_initializer=keras.initializers.RandomNormal(seed=0))
    layer.build((None, 6))
    assert layer.lipschitz_constant() > 1.2  # why model.Sequential warns for it


@pytest.mark.parametrize(
    "make",
    [
        lambda: lip.FrobeniusDense(5, disjoint_neurons=False),
        lambda: lip.FrobeniusDense(1),
        lambda: lip.SpectralDense(5),
    ],
)
def test_sequential_does_not_warn_for_layers_lipschitz_by_construction(make):
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        Sequential([keras.Input((6,)), make()])
