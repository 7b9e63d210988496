"""Independent audit of issues 11 and 15: bounds that can be below the true Lipschitz constant.

Each test states the claim of the protocol ("the bound describes the function that runs") on a case found by the
audit probes (tests/audit_probes/). Tests that fail on the current code are strict xfails naming the bug, so that
they flip (XPASS -> failure) when it is fixed and the marker must be removed.
"""

import keras
import numpy as np
import pytest
import tensorflow as tf
from _backend import runs_channels_first_convolutions

from deel_lip_ext import layers as lip
from deel_lip_ext.certification import certify
from deel_lip_ext.linf import certify_lipschitz, linf_lipschitz_bound
from deel_lip_ext.utils import model_lipschitz_bound


def _operator(fn, in_shape):
    """(inputs, outputs) float64 matrix of an affine map from unit impulses, f(0) removed."""
    size = int(np.prod(in_shape))
    eye = np.eye(size, dtype="float32").reshape((size, *in_shape))
    zero = np.asarray(fn(np.zeros((1, *in_shape), "float32")), np.float64).reshape(1, -1)
    return np.asarray(fn(eye), np.float64).reshape(size, -1) - zero


def _linf(matrix):
    return float(np.abs(matrix).sum(axis=0).max())  # y = x @ M: max over outputs of the row of |J|


def _jacobian_l2(model, x):
    x = tf.convert_to_tensor(x)
    with tf.GradientTape() as tape:
        tape.watch(x)
        y = tf.reshape(model(x, training=False), (x.shape[0], -1))
    jac = tape.batch_jacobian(y, x).numpy().astype(np.float64).reshape(x.shape[0], y.shape[1], -1)
    return float(np.linalg.svd(jac, compute_uv=False)[:, 0].max())


# ---------------------------------------------------------------- l_inf of AOCConv2DTranspose


@pytest.mark.parametrize("strides", [1, 2])
@pytest.mark.parametrize("padding", ["same", "circular", "valid"])
def test_aoc_transposed_linf_bound_covers_the_operator(padding, strides):
    # The transposed layout (kh, kw, filters, c_in) sums over residue classes of taps, not over a direct
    # conv's columns (LipschitzConv.linf_operator_norm, shared with SpectralConv2DTranspose).
    layer = lip.AOCConv2DTranspose(
        1,
        4,
        strides=strides,
        padding=padding,
        use_bias=False,
        kernel_initializer=keras.initializers.RandomNormal(0.0, 1.0, seed=0),
    )
    model = keras.Sequential([keras.Input((4, 4, 2)), layer])
    exact = _linf(_operator(lambda x: keras.ops.convert_to_numpy(model(x)), (4, 4, 2)))
    assert layer.lipschitz_constant("linf") >= exact * (1 - 1e-6)
    assert linf_lipschitz_bound(model) >= exact * (1 - 1e-6)


def test_aoc_transposed_linf_certificate_is_not_broken_by_an_attack():
    shape = (4, 4, 8)
    layer = lip.AOCConv2DTranspose(
        1, 3, padding="same", use_bias=False, kernel_initializer=keras.initializers.RandomNormal(0.0, 1.0, seed=0)
    )
    head = keras.layers.Dense(2)
    model = keras.Sequential([keras.Input(shape), layer, keras.layers.Flatten(), head])
    conv_matrix = _operator(lambda x: keras.ops.convert_to_numpy(layer(x)), shape)
    out = int(np.argmax(np.abs(conv_matrix).sum(axis=0)))  # the output entry with the largest l_1 row
    row = conv_matrix[:, out]
    eps, selector = 0.1, np.zeros((16, 2), "float32")
    selector[out] = [1.0, -1.0]  # logits (t + b, -t - b): margin 2 (t + b); the head's l_inf norm is 1
    head.set_weights([selector, np.zeros(2, "float32")])
    bound = linf_lipschitz_bound(model)  # 0.70 here; the l_1 norm of `row` is 2.35
    offset = 1.05 * bound * eps  # certified radius 2 offset / (2 bound) = 1.05 eps
    head.set_weights([selector, np.array([offset, -offset], "float32")])
    x = np.zeros((1, *shape), "float32")
    assert certify_lipschitz(model, x, np.array([0]), eps=eps)[0]
    attack = x - eps * np.sign(row).reshape(1, *shape).astype("float32")  # ||attack - x||_inf = eps
    logits = keras.ops.convert_to_numpy(model(attack))[0]
    assert logits[0] > logits[1], (logits, np.abs(row).sum(), bound)


# ---------------------------------------------------------------- the model runs at another size than it is bounded at


def _stock_conv_sequential():
    conv = keras.layers.Conv2D(1, 3, padding="same", use_bias=False, kernel_initializer="ones")
    return keras.Sequential([keras.Input((3, 3, 1)), conv])


def test_sequential_run_at_another_size_is_refused_or_bounded():
    model = _stock_conv_sequential()
    bound = model_lipschitz_bound(model)
    try:
        exact = np.linalg.norm(_operator(lambda x: keras.ops.convert_to_numpy(model(x)), (9, 9, 1)), 2)
    except ValueError:
        return  # refusing another size is a fix
    assert bound >= exact * (1 - 1e-6), (bound, exact)


def test_cpl_conv_run_at_another_size_is_refused_or_bounded():
    layer = lip.CPLConv2D(2, 3, padding="same", kernel_initializer=keras.initializers.RandomNormal(0.0, 1.0, seed=3))
    model = keras.Sequential([keras.Input((3, 3, 1)), layer])
    bound = model_lipschitz_bound(model)
    x = np.random.default_rng(0).normal(size=(16, 9, 9, 1)).astype("float32")
    try:
        measured = _jacobian_l2(model, x)
    except ValueError:
        return
    assert bound >= measured * (1 - 1e-5), (bound, measured)


def test_nested_fixed_size_model_in_an_any_size_model():
    inner = _stock_conv_sequential()
    outer_input = keras.Input((None, None, 1))
    model = keras.Model(outer_input, inner(outer_input))
    bound = model_lipschitz_bound(model)
    try:
        exact = np.linalg.norm(_operator(lambda x: keras.ops.convert_to_numpy(model(x)), (9, 9, 1)), 2)
    except ValueError:
        return
    assert bound >= exact * (1 - 1e-6), (bound, exact)


@pytest.mark.skipif(keras.backend.backend() != "tensorflow", reason="tf.function's shape relaxation is TensorFlow's")
def test_pinned_conv_under_a_shape_relaxed_tf_function():
    conv = lip.SpectralConv2D(2, 3, padding="same", use_bias=False)
    model = keras.Sequential([keras.Input((3, 3, 1)), conv])
    bound = model_lipschitz_bound(model)
    run = tf.function(lambda x: model(x, training=False), reduce_retracing=True)
    worst = 0.0
    for size in (3, 5, 9):
        try:
            worst = max(worst, np.linalg.norm(_operator(lambda x: run(x).numpy(), (size, size, 1)), 2))
        except (ValueError, tf.errors.InvalidArgumentError):
            return
    assert bound >= worst * (1 - 1e-6), (bound, worst)


def test_certify_refuses_or_bounds_inputs_of_another_size():
    layer = lip.CPLConv2D(2, 3, padding="same", kernel_initializer=keras.initializers.RandomNormal(0.0, 1.0, seed=3))
    model = keras.Sequential([keras.Input((3, 3, 2)), layer, lip.ScaledGlobalL2NormPooling2D()])
    x = np.random.default_rng(1).normal(size=(16, 9, 9, 2)).astype("float32")
    y = np.zeros((16,), "int64")
    try:
        result = certify(model, (x, y), 0.1, verbose=False)
    except ValueError:
        return
    measured = _jacobian_l2(model, x)
    assert result.lip_const >= measured * (1 - 1e-5), (result.lip_const, measured)


# ---------------------------------------------------------------- the table of stock layers


def test_channels_first_global_average_pooling():
    inputs = keras.Input((16, 2, 2))
    model = keras.Model(inputs, keras.layers.GlobalAveragePooling2D(data_format="channels_first")(inputs))
    exact = np.linalg.norm(_operator(lambda x: keras.ops.convert_to_numpy(model(x)), (16, 2, 2)), 2)
    assert model_lipschitz_bound(model) >= exact * (1 - 1e-6), exact


def test_int8_quantized_dense_is_refused_or_bounded():
    inputs = keras.Input((4,))
    dense = keras.layers.Dense(4, use_bias=False)
    model = keras.Model(inputs, dense(inputs))
    dense.kernel.assign(1000.0 * np.random.default_rng(0).normal(size=(4, 4)).astype("float32"))
    model.quantize("int8")
    exact = np.linalg.norm(_operator(lambda x: keras.ops.convert_to_numpy(model(x)), (4,)), 2)
    try:
        bound = model_lipschitz_bound(model)
    except ValueError:
        return
    assert bound >= exact * (1 - 1e-6), (bound, exact)


# ---------------------------------------------------------------- mixed precision: stock weights and constants

# 1 + 2^-8 + 2^-9 is a float32 number that bfloat16 rounds UP to 1 + 2^-7.
_ROUNDS_UP = 1.0 + 2.0**-8 + 2.0**-9


@pytest.fixture
def bfloat16_policy():
    keras.mixed_precision.set_global_policy("mixed_bfloat16")
    try:
        yield
    finally:
        keras.mixed_precision.set_global_policy("float32")


def _stock_dense_model():
    inputs = keras.Input((1,))
    dense = keras.layers.Dense(1, use_bias=False)
    model = keras.Model(inputs, dense(inputs))
    dense.kernel.assign(np.array([[_ROUNDS_UP]], "float32"))
    return model


@pytest.mark.parametrize("kind", ["dense", "rescaling", "constant"])
def test_bfloat16_rounding_of_stock_weights_and_constants_is_bounded(bfloat16_policy, kind):
    if kind == "dense":
        model = _stock_dense_model()
    elif kind == "rescaling":
        model = keras.Sequential([keras.Input((1,)), keras.layers.Rescaling(_ROUNDS_UP)])
    else:
        inputs = keras.Input((1,))
        model = keras.Model(inputs, keras.layers.Activation("linear")(inputs) * _ROUNDS_UP)
    out = keras.ops.convert_to_numpy(model(np.array([[1.0], [0.0]], "float32"))).astype(np.float64)
    slope = out[0, 0] - out[1, 0]  # exact: 1 * rounded weight, representable
    assert model_lipschitz_bound(model) >= slope * (1 - 1e-9), (model_lipschitz_bound(model), slope)


# ---------------------------------------------------------------- models and layers whose class overrides `call`


class _NormalizingSequential(keras.Sequential):
    """A common pattern: the input normalization (x - mean) / std written in `call`."""

    def call(self, inputs, training=None, mask=None):
        return super().call((inputs - 0.5) / 0.01, training=training, mask=mask)


class _ScaledFunctional(keras.Model):
    def __init__(self):
        inputs = keras.Input((3,))
        super().__init__(inputs, lip.SpectralDense(3)(inputs))

    def call(self, inputs, training=None, mask=None):
        return 100.0 * super().call(inputs, training=training, mask=mask)


@pytest.mark.parametrize(
    "make", [lambda: _NormalizingSequential([keras.Input((3,)), lip.SpectralDense(3)]), _ScaledFunctional]
)
def test_model_class_overriding_call_is_refused_or_bounded(make):
    model = make()
    exact = np.linalg.norm(_operator(lambda x: keras.ops.convert_to_numpy(model(x)), (3,)), 2)
    try:
        bound = model_lipschitz_bound(model)
    except ValueError:
        return
    assert bound >= exact * (1 - 1e-6), (bound, exact)


class _NegatingSequential(keras.Sequential):
    def call(self, inputs, training=None, mask=None):
        return -super().call(inputs, training=training, mask=mask)


def test_certify_ibp_never_certifies_a_class_the_model_does_not_predict():
    from deel_lip_ext.linf import certify_ibp

    model = _NegatingSequential([keras.Input((2,)), keras.layers.Dense(2, kernel_initializer="identity")])
    x = np.array([[1.0, 0.0]], "float32")
    predicted = int(np.argmax(keras.ops.convert_to_numpy(model(x))))
    wrong = 1 - predicted
    try:
        certified = bool(certify_ibp(model, x, np.array([wrong]), eps=0.1, clip_min=None, clip_max=None)[0])
    except ValueError:
        return
    assert not certified


def test_ibp_on_a_functional_chain_runs_or_refuses_clearly():
    from deel_lip_ext.linf import certify_ibp

    inputs = keras.Input((2,))
    model = keras.Model(inputs, keras.layers.Dense(2, kernel_initializer="identity")(inputs))
    x = np.array([[1.0, 0.0]], "float32")
    try:
        certified = certify_ibp(model, x, np.array([0]), eps=0.1, clip_min=None, clip_max=None)
    except ValueError:
        return
    assert certified[0]


def test_library_layer_subclass_overriding_call_is_refused_or_bounded():
    class Louder(lip.SpectralDense):
        def call(self, inputs, training=None):
            return 10.0 * super().call(inputs, training=training)

    model = keras.Sequential([keras.Input((3,)), Louder(3)])
    exact = np.linalg.norm(_operator(lambda x: keras.ops.convert_to_numpy(model(x)), (3,)), 2)
    try:
        bound = model_lipschitz_bound(model)
    except ValueError:
        return
    assert bound >= exact * (1 - 1e-6), (bound, exact)


def test_circular_padding_then_channels_first_conv_is_refused_or_bounded():
    inputs = keras.Input((3, 3, 6))
    conv = keras.layers.Conv2D(2, 3, padding="valid", data_format="channels_first", use_bias=False)
    model = keras.Model(inputs, conv(lip.CircularPadding2D(1)(inputs)))
    conv.kernel.assign(np.random.default_rng(0).normal(size=conv.kernel.shape).astype("float32"))

    def channels_last_twin(x):
        # The model's function with the convolution run channels-last between two transposes: TensorFlow's CPU
        # kernels without oneDNN (its default on some CPUs, an AVX2-only EPYC among them) have no NCHW Conv2D.
        padded = keras.ops.transpose(lip.CircularPadding2D(1)(x), (0, 2, 3, 1))  # (N, C, H, W) -> (N, H, W, C)
        outputs = keras.ops.conv(padded, conv.kernel, padding="valid", data_format="channels_last")
        return keras.ops.convert_to_numpy(keras.ops.transpose(outputs, (0, 3, 1, 2)))

    if runs_channels_first_convolutions():  # elsewhere the twin stands for a model TensorFlow cannot run
        probe = np.random.default_rng(1).normal(size=(2, 3, 3, 6)).astype("float32")
        np.testing.assert_allclose(channels_last_twin(probe), keras.ops.convert_to_numpy(model(probe)), atol=1e-5)
    exact = np.linalg.norm(_operator(channels_last_twin, (3, 3, 6)), 2)
    try:
        bound = model_lipschitz_bound(model)
    except ValueError:
        return
    assert bound >= exact * (1 - 1e-6), (bound, exact)


# ---------------------------------------------------------------- loss inputs


@pytest.mark.parametrize("label_shape", ["int (N,)", "int (N, 1)", "one-hot (1, C)"])
def test_multiclass_soft_hkr_checks_its_labels(label_shape):
    from deel_lip_ext import losses

    rng = np.random.default_rng(0)
    logits = rng.normal(size=(6, 4)).astype("float32")
    indices = np.array([0, 3, 1, 2, 2, 1])
    labels = {
        "int (N,)": indices,
        "int (N, 1)": indices[:, None],
        "one-hot (1, C)": np.eye(4, dtype="float32")[indices][:1],
    }[label_shape]
    with pytest.raises(ValueError, match="one-hot|match"):
        losses.MulticlassSoftHKR()(labels, logits)
