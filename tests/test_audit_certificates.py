"""Independent audit, second round: bounds and certificates that an adversarial tester broke.

Each test is a case where the library returned a bound below the true Lipschitz constant, a radius that
a perturbation inside it breaks, or a count that did not match its definition; each fails on the code
before its fix. Every model is small enough for the exact answer (operator matrices, explicit x and delta).
"""

import warnings

import keras
import numpy as np
import pytest
from keras import ops

from deel_lip_ext import layers as lip
from deel_lip_ext.attacks import verify_certificates
from deel_lip_ext.certification import certified_radius, certify, float32_copy
from deel_lip_ext.linf import certify_ibp, certify_lipschitz, ibp_margins
from deel_lip_ext.metrics import CategoricalProvableAvgRobustness, CertifiedAccuracy
from deel_lip_ext.model import Sequential, vanilla_model
from deel_lip_ext.utils import model_lipschitz_bound


def _predict(model, x):
    return np.asarray(ops.convert_to_numpy(model(np.asarray(x, "float32"), training=False)), np.float64)


def _operator_norm(model, in_shape):
    """Exact L2 norm of a linear model at `in_shape`: the largest singular value of its impulse responses."""
    size = int(np.prod(in_shape))
    responses = _predict(model, np.eye(size, dtype="float32").reshape((size, *in_shape))).reshape(size, -1)
    return float(np.linalg.svd(responses, compute_uv=False)[0])


# ---------------------------------------------------------------- graph bounds


def _pooled_residual(shape):
    inputs = keras.Input(shape)
    pooled = keras.layers.AveragePooling2D(8)(inputs) * 8.0  # 1-Lipschitz on an 8 x 8 map
    return keras.Model(inputs, keras.layers.Add()([inputs, pooled]))


def test_an_add_of_unknown_sizes_that_broadcasts_at_run_time_is_refused_in_l2():
    # Both operands are (None, None, None, 1) in the graph; on an 8 x 8 input the pooled one is 1 x 1 and is
    # copied to 64 positions: the constant is 1 + sqrt(64) = 9, not the 1 + 1 the walk used to claim.
    any_size = _pooled_residual((None, None, 1))
    exact = _operator_norm(any_size, (8, 8, 1))
    assert exact == pytest.approx(9.0, rel=1e-5)
    with pytest.raises(ValueError, match="unknown until it runs"):
        model_lipschitz_bound(any_size)
    assert model_lipschitz_bound(any_size, "linf") >= 1.0  # copies do not change an l_inf norm
    fixed = _pooled_residual((8, 8, 1))
    assert model_lipschitz_bound(fixed) >= exact * (1 - 1e-6)


def test_constants_that_cannot_broadcast_keep_unknown_sizes_bounded():
    inputs = keras.Input((None, None, 2))
    scaled = keras.Model(inputs, inputs * np.array([2.0, 3.0], "float32") + 1.0)
    assert model_lipschitz_bound(scaled) == pytest.approx(3.0)
    tiled = keras.Model(inputs, inputs * np.ones((4, 4, 2), "float32"))  # a 1 x 1 input would be copied
    with pytest.raises(ValueError, match="unknown until it runs"):
        model_lipschitz_bound(tiled)


def test_an_integer_input_is_refused():
    # Keras casts float data to the Input's int32: a step function, 1000x the claimed constant at 1e-3.
    inputs = keras.Input((2,), dtype="int32")
    model = keras.Model(inputs, keras.layers.Dense(2)(inputs))
    x, nearby = np.array([[1.0, 0.0]]), np.array([[0.999, 0.0]])
    assert np.linalg.norm(_predict(model, x) - _predict(model, nearby)) > 0.1
    with pytest.raises(ValueError, match="int32"):
        model_lipschitz_bound(model)


class _LoudSequential(keras.Sequential):
    def call(self, inputs, training=None, mask=None):
        return 100.0 * super().call(inputs, training=training, mask=mask)


def test_lip_residual_refuses_a_sequential_branch_that_overrides_call():
    branch = _LoudSequential([keras.Input((4,)), lip.SpectralDense(4)])
    inputs = keras.Input((4,))
    model = keras.Model(inputs, lip.LipResidual(branch)(inputs))
    assert _operator_norm(model, (4,)) > 10.0
    with pytest.raises(ValueError, match="overrides `call`"):
        model_lipschitz_bound(model)


# ---------------------------------------------------------------- what certify reads


def _binary(activation):
    inputs = keras.Input((2,))
    dense = keras.layers.Dense(1, activation=activation)
    model = keras.Model(inputs, dense(inputs))
    dense.set_weights([np.array([[1.0], [0.0]], "float32"), np.zeros(1, "float32")])
    return model


def test_certify_refuses_a_single_probability_output():
    # sigmoid(0.1) = 0.525 was read as a logit: radius 2.1 at x = (0.1, 0), while x - (0.11, 0) is class 0.
    model = _binary("sigmoid")
    x, y = np.array([[0.1, 0.0]], "float32"), np.array([1])
    assert _predict(model, x - np.array([[0.11, 0.0]]))[0, 0] < 0.5
    for head in (model, _binary("softplus"), keras.Sequential([keras.Input((2,)), model, keras.layers.Flatten()])):
        with pytest.raises(ValueError, match="single output"):
            certify(head, (x, y), [0.05], verbose=False)
    with pytest.raises(ValueError, match="single output"):
        verify_certificates(model, x, y, 0.05, steps=2, restarts=1, verbose=False)
    inputs = keras.Input((2,))
    op_head = keras.Model(inputs, ops.sigmoid(keras.layers.Dense(1)(inputs)))
    with pytest.raises(ValueError, match="single output"):
        certify(op_head, (x, y), [0.05], verbose=False)
    assert certify(_binary(None), (x, y), [0.05], verbose=False).radii[0] == pytest.approx(0.1, rel=1e-5)


def test_certify_refuses_several_inputs_and_structured_outputs():
    inputs = keras.Input((2,))
    logits = keras.layers.Dense(2)(inputs)
    x, y = np.zeros((3, 2), "float32"), np.zeros(3, "int64")
    with pytest.raises(ValueError, match="one input and one"):
        certify(keras.Model(inputs, {"logits": logits}), (x, y), [0.1], verbose=False)
    other = keras.Input((2,))
    with pytest.raises(ValueError, match="one input and one"):
        certify(keras.Model([inputs, other], keras.layers.Add()([logits, other])), ([x, x], y), [0.1])


def test_a_tuple_of_two_sample_lists_is_read_as_x_and_y():
    inputs = keras.Input((2,))
    dense = keras.layers.Dense(2, use_bias=False)
    model = keras.Model(inputs, dense(inputs))
    dense.set_weights([np.eye(2, dtype="float32")])
    result = certify(model, ([[3.0, 0.0], [0.0, 3.0]], [0, 1]), [0.1], verbose=False)
    np.testing.assert_allclose(result.radii, [3.0 / np.sqrt(2)] * 2, rtol=1e-5)


def test_certify_refuses_half_precision_models():
    # The rounding of float16 logits flipped a decision at 0.77 of a radius of 7.8e-5 (the tester's scan).
    keras.config.set_dtype_policy("mixed_float16")
    try:
        model = keras.Sequential([keras.Input((2,)), lip.SpectralDense(2)])
    finally:
        keras.config.set_dtype_policy("float32")
    x, y = np.zeros((2, 2), "float32"), np.array([0, 1])
    with pytest.raises(ValueError, match="half precision"):
        certify(model, (x, y), [0.1], verbose=False)
    with pytest.raises(ValueError, match="half precision"):
        certify_lipschitz(model, x, y, 0.1)
    copy = float32_copy(model)  # what the error points to: the same weights, computed in float32
    assert {layer.compute_dtype for layer in copy._flatten_layers()} == {"float32"}
    points = np.random.default_rng(0).normal(size=(4, 2)).astype("float32")
    np.testing.assert_allclose(_predict(copy, points), _predict(model, points), rtol=0, atol=5e-3)
    assert certify(copy, (x, y), [0.1], verbose=False).n_samples == 2


def test_a_mixed_precision_sequential_with_k_does_not_warn_for_its_rounded_constants():
    # Each layer gets k = 2^(1/3), rounded in float16 by up to 4.9e-4: still k up to the compute dtype.
    keras.config.set_dtype_policy("mixed_float16")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            model = Sequential(
                [keras.Input((6,)), lip.SpectralDense(4), lip.GroupSort2(), lip.SpectralDense(3)], k_coef_lip=2.0
            )
    finally:
        keras.config.set_dtype_policy("float32")
    assert model.layers[1].k_coef_lip == pytest.approx(2.0 ** (1 / 3))


def test_radii_keep_the_logits_precision_and_refuse_non_finite_logits():
    # float64 logits 1e-9 apart were rounded to a float32 tie (radius 0) or to a wider margin.
    logits = np.array([[1.0 + 3e-9, 1.0], [np.inf, 0.0], [np.nan, 0.0]], np.float64)
    radii = certified_radius(logits, [0, 0, 0])
    exact = 3e-9 / np.sqrt(2)
    assert radii[0] <= exact * (1 + 1e-4)  # never wider than the float64 margin allows
    if keras.backend.backend() != "jax":  # JAX computes in float32 unless x64 is on: a tie, radius 0
        assert radii[0] == pytest.approx(exact, rel=1e-4)
    np.testing.assert_array_equal(radii[1:], [0.0, 0.0])


def test_verify_certificates_with_an_linf_bound_uses_the_linf_constant():
    # Columns +-1/10 over 100 inputs: L2 constant sqrt(2), l_inf constant 10. At x = 0.05 the margin is 1, so the
    # l_inf radius is 1 / (2 * 10) = 0.05 < eps = 0.1 (not certified): x - 0.06 flips the decision.
    inputs = keras.Input((100,))
    dense = keras.layers.Dense(2, use_bias=False)
    model = keras.Model(inputs, dense(inputs))
    column = np.ones((100, 1), "float32") / 10.0
    dense.set_weights([np.concatenate([column, -column], axis=1)])
    x, y = np.full((1, 100), 0.05, "float32"), np.array([0])
    assert np.argmax(_predict(model, x - 0.06)) == 1
    result = verify_certificates(
        model, x, y, 0.1, norm="linf", lip_norm="linf", clip_min=None, clip_max=None, steps=5, verbose=False
    )
    assert result.lip_const == pytest.approx(10.0, rel=1e-6)
    assert result.n_certified == 0 and result.n_broken == 0


# ---------------------------------------------------------------- interval bound propagation


def _chain(units):
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(units, use_bias=False)])
    model.layers[0].set_weights([np.array([[1.0, -1.0], [0.0, 0.0]], "float32")[:, :units]])
    return model


def test_ibp_refuses_a_single_output_model():
    # With one logit there is no "other class": every label-0 sample was certified, x = (0.9, 0.5) predicts 1.
    with pytest.raises(ValueError, match="C >= 2"):
        certify_ibp(_chain(1), np.array([[0.9, 0.5]], "float32"), np.array([0]), 0.5)


def test_ibp_refuses_points_outside_the_clip_box():
    # x = 200 with the default box [0, 1]: the clipped box {1} is not near x, whose class is 0.
    model = _chain(2)
    x = np.array([[200.0, 0.0]], "float32")
    assert np.argmax(_predict(model, x)) == 0
    with pytest.raises(ValueError, match="outside"):
        ibp_margins(model, x, np.array([1]), 1.0)
    assert not certify_ibp(model, x, np.array([1]), 1.0, clip_min=None, clip_max=None)[0]


# ---------------------------------------------------------------- metrics


@pytest.mark.parametrize("label", [[0.93, 0.03, 0.04], 3, -1, 0.5])
def test_certified_metrics_count_invalid_labels_as_not_certified(label):
    # Logits predict class 1; a soft or out-of-range label counted as certified at eps = 100 (radius inf).
    logits = np.array([[-1.0, -0.2, -3.0]] * 2, "float32")
    labels = np.array([label] * 2, "float32")
    accuracy, robustness = CertifiedAccuracy(0.0), CategoricalProvableAvgRobustness()
    accuracy.update_state(labels, logits)
    robustness.update_state(labels, logits)
    assert float(accuracy.result()) == 0.0
    assert float(robustness.result()) == 0.0
    with pytest.raises(ValueError):
        certified_radius(logits, labels)
    valid = CertifiedAccuracy(0.0)
    valid.update_state(np.array([1, 1], "float32"), logits)
    assert float(valid.result()) == 1.0


# ---------------------------------------------------------------- layers


def test_global_average_pooling_refuses_another_size_under_an_unknown_size_trace():
    # Built for 4 x 4 (scale sqrt(16)), a 2 x 2 input traced with unknown sizes ran 2x more Lipschitz than bounded.
    pool = lip.ScaledGlobalAveragePooling2D()
    pool(np.zeros((1, 4, 4, 1), "float32"))
    inputs = keras.Input((None, None, 1))
    model = keras.Model(inputs, pool(inputs))
    ones = np.ones((1, 2, 2, 1), "float32")
    with pytest.raises(ValueError, match="4 x 4"):
        model(ones)
    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        traced = tf.function(model, input_signature=[tf.TensorSpec((None, None, None, 1), tf.float32)])
        np.testing.assert_allclose(traced(np.ones((1, 4, 4, 1), "float32")).numpy(), [[4.0]], rtol=1e-6)
        with pytest.raises(tf.errors.InvalidArgumentError, match="4 x 4"):
            traced(ones)


@pytest.mark.parametrize(
    "make",
    [
        lambda: lip.GroupSort2(k_coef_lip=0.3),
        lambda: lip.Householder(k_coef_lip=0.3),
        lambda: lip.ScaledAveragePooling2D((1, 3)),
        lambda: lip.ScaledL2NormPooling2D((1, 3), eps_grad_sqrt=0.0),
    ],
)
def test_bfloat16_rounding_of_a_parameter_free_layer_constant_is_bounded(make):
    # k = 0.3 rounds to 0.30078125 in bfloat16 and sqrt(3) to 1.734375: the layers are that much more Lipschitz.
    keras.config.set_dtype_policy("mixed_bfloat16")
    try:
        layer = make()
        shape = (1, 1, 3, 2)
        layer.build(shape)
    finally:
        keras.config.set_dtype_policy("float32")
    x = np.zeros(shape, "float32")
    y = np.zeros(shape, "float32")
    y[0, 0, :, 0] = 1.0  # exactly representable: only the constants round
    moved = np.linalg.norm(_predict(layer, y) - _predict(layer, x))
    assert moved / np.linalg.norm(y - x) <= layer.lipschitz_constant("l2", shape)


def test_spectral_dense_without_bjorck_is_not_claimed_k_lipschitz_by_construction():
    # Divided by a power-iteration estimate: a state on the second singular vector stalls it at sigma_2 < sigma_1.
    layer = lip.SpectralDense(7, eps_bjorck=None, k_coef_lip=7.0)
    layer.build((None, 7))
    kernel = np.random.default_rng(0).normal(size=(7, 7))
    second = np.linalg.svd(kernel)[2][1:2]
    layer.set_weights([kernel.astype("float32"), np.zeros(7, "float32"), second.astype("float32")])
    assert _operator_norm(layer, (7,)) > 7.0 * 1.01
    assert not layer.lipschitz_by_construction()
    assert not lip.OSSNConv2D(3, 3).lipschitz_by_construction()
    with pytest.warns(UserWarning, match="'suspect'"):
        Sequential([keras.Input((7,)), lip.SpectralDense(7, eps_bjorck=None, name="suspect")])


# ---------------------------------------------------------------- exports and condense


def test_the_windows_rewrite_reads_the_size_a_stock_conv_runs_at_not_its_build_size():
    # A one-channel "same" Conv2D built at 8 x 8 then used on 9 x 9: rewritten for 8 x 8 (divisible by the 2 x 2
    # windows), the export pooled 5 x 5 windows where the model pools 4 x 4 (outputs 18 % apart).
    conv = keras.layers.Conv2D(4, 3, padding="same")
    conv.build((None, 8, 8, 1))
    inputs = keras.Input((9, 9, 1))
    pooled = lip.ScaledL2NormPooling2D((2, 2))(lip.GroupSort2()(conv(inputs)))
    functional = keras.Model(inputs, keras.layers.Dense(2)(keras.layers.GlobalAveragePooling2D()(pooled)))
    sequential = keras.Sequential(
        [keras.Input((9, 9, 1)), conv, lip.GroupSort2(), lip.ScaledL2NormPooling2D((2, 2)), keras.layers.Flatten()]
    )
    x = np.random.default_rng(0).normal(size=(4, 9, 9, 1)).astype("float32")
    for model in (functional, sequential):
        expected = _predict(model, x)
        np.testing.assert_allclose(_predict(vanilla_model(model), x), expected, atol=1e-5 * np.abs(expected).max())


@pytest.mark.parametrize("kind", ["stock", "keras_sequential", "library_sequential"])
def test_a_lip_residual_export_shares_nothing_with_the_model(kind):
    branch = {
        "stock": lambda: keras.layers.Dense(6),
        "keras_sequential": lambda: keras.Sequential([lip.SpectralDense(6), lip.GroupSort2()]),
        "library_sequential": lambda: Sequential([keras.Input((6,)), lip.SpectralDense(6), lip.GroupSort2()]),
    }[kind]()
    model = keras.Sequential([keras.Input((6,)), lip.LipResidual(branch), lip.SpectralDense(2)])
    x = np.random.default_rng(0).normal(size=(8, 6)).astype("float32")
    export = vanilla_model(model)  # the library Sequential branch raised a TypeError
    before = _predict(export, x)
    np.testing.assert_allclose(before, _predict(model, x), atol=1e-5)
    for variable in model.trainable_variables:  # the export of the stock branches moved with these
        variable.assign(variable + 0.5)
    np.testing.assert_array_equal(_predict(export, x), before)
    exported_branch = export.layers[0].layer
    parts = exported_branch._flatten_layers() if isinstance(exported_branch, keras.Model) else [exported_branch]
    assert not any(isinstance(part, lip.ParametrizedLayer) for part in parts)


@pytest.mark.parametrize("make", [lambda: lip.AOLDense(5), lambda: lip.AOLConv2D(3, 3)])
def test_condense_keeps_what_an_aol_layer_computes(make):
    # Writing D K back into the raw kernel rescaled it twice: outputs moved by 2 to 3 % at initialization.
    layer = make()
    shape = (4, 6) if isinstance(layer, lip.AOLDense) else (2, 6, 6, 2)
    x = np.random.default_rng(0).normal(size=shape).astype("float32")
    before = _predict(layer, x)
    layer.condense()
    np.testing.assert_allclose(_predict(layer, x), before, rtol=0, atol=1e-6)
