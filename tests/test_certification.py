"""Certified radii, one-call certification and the Lipschitz sandwich lower <= upper <= k."""

import math

import keras
import numpy as np
import pytest

from deel_lip_ext import layers
from deel_lip_ext.certification import certified_radius, certify, lipschitz_bounds
from deel_lip_ext.model import Sequential

SQRT2 = math.sqrt(2)


# ------------------------------------------------------------------ certified_radius


def test_radius_formula_on_hand_built_logits():
    logits = np.array([[3.0, 1.0, 0.0], [2.0, 2.0, 0.0], [0.0, 3.0, 1.0], [-1.0, -4.0, -1.5]])
    labels = np.array([0, 0, 0, 0])  # margins 2, tie (0), misclassified, 0.5
    margins = np.array([2.0, 0.0, 0.0, 0.5])
    for lip in (1.0, 2.5):
        np.testing.assert_allclose(certified_radius(logits, labels, lip_const=lip), margins / (SQRT2 * lip), rtol=1e-6)
        np.testing.assert_allclose(
            certified_radius(logits, labels, lip_const=lip, disjoint_neurons=True), margins / (2 * lip), rtol=1e-6
        )
        np.testing.assert_allclose(certified_radius(logits, labels, "linf", lip), margins / (2 * lip), rtol=1e-6)


def test_radius_is_independent_of_the_label_format():
    logits = np.random.default_rng(0).normal(size=(20, 4))
    labels = np.random.default_rng(1).integers(0, 4, 20)
    onehot = np.eye(4)[labels]
    expected = certified_radius(logits, labels)
    for form in (labels[:, None], onehot, 2 * onehot - 1, labels.astype("float32")):
        np.testing.assert_array_equal(certified_radius(logits, form), expected)


def test_binary_single_logit_radius():
    logits = np.array([[1.5], [-0.5], [-2.0], [0.0], [0.7]])
    labels01 = np.array([1, 1, 0, 1, 0])
    expected = np.array([1.5, 0.0, 2.0, 0.0, 0.0]) / 0.5
    np.testing.assert_allclose(certified_radius(logits, labels01, lip_const=0.5), expected)
    np.testing.assert_allclose(certified_radius(logits, 2 * labels01 - 1, lip_const=0.5), expected)
    np.testing.assert_allclose(certified_radius(logits, labels01[:, None], "linf", 0.5), expected)


@pytest.mark.parametrize(
    "logits,labels,kwargs,match",
    [
        (np.zeros((3, 4)), np.zeros((3, 5)), {}, "labels must have shape"),
        (np.zeros((3, 4)), np.zeros(4, int), {}, "labels must have shape"),
        (np.zeros((3, 4)), np.array([0, 4, 1]), {}, "class indices"),
        (np.zeros((3, 4)), np.array([0.5, 1, 1]), {}, "class indices"),
        (np.zeros((2, 3)), np.array([[1, 1, 0], [0, 1, 0]]), {}, "exactly one positive"),
        (np.zeros((3, 1)), np.array([0, 2, 1]), {}, "binary labels"),
        (np.zeros(3), np.zeros(3), {}, "logits must have shape"),
        (np.zeros((3, 4)), np.zeros(3, int), {"norm": "l1"}, "norm"),
        (np.zeros((3, 4)), np.zeros(3, int), {"lip_const": 0.0}, "lip_const"),
        (np.zeros((3, 4)), np.zeros(3, int), {"lip_const": float("nan")}, "lip_const"),
    ],
)
def test_radius_bad_input_raises(logits, labels, kwargs, match):
    with pytest.raises(ValueError, match=match):
        certified_radius(logits, labels, **kwargs)


# ------------------------------------------------------------------ certify


def dense_model(seed=0, inputs=6, outputs=3, activation=None):
    keras.utils.set_random_seed(seed)
    stack = [
        keras.Input((inputs,)),
        keras.layers.Dense(16, activation=activation or "relu"),
        keras.layers.Dense(outputs),
    ]
    return keras.Sequential(stack)


def toy_data(seed=0, n=50, inputs=6, classes=3):
    rng = np.random.default_rng(seed)
    return rng.uniform(size=(n, inputs)).astype("float32"), rng.integers(0, classes, n)


def test_certify_reports_the_formula():
    model = dense_model()
    x, y = toy_data()
    radii = certified_radius(keras.ops.convert_to_numpy(model(x)), y, lip_const=3.0)
    result = certify(model, (x, y), [0.0, 0.01, 0.05], lip_const=3.0, batch_size=16)
    np.testing.assert_allclose(result.radii, radii, rtol=1e-6)
    np.testing.assert_allclose(result.certified_accuracy, [np.mean(radii > e) for e in (0.0, 0.01, 0.05)])
    assert result.clean_accuracy == np.mean(np.argmax(keras.ops.convert_to_numpy(model(x)), 1) == y)
    assert result.mean_radius == pytest.approx(radii.mean()) and result.median_radius == pytest.approx(np.median(radii))
    assert result.lip_const == 3.0 and result.lip_const_source == "user" and result.n_samples == 50
    assert result.as_dict()["certified_accuracy"][0.01] == pytest.approx(np.mean(radii > 0.01))


def test_certify_runs_one_compiled_forward_for_every_batch():
    """Batches of 4, 4 and 2 (padded to 4): the model's Python code runs once on the compiling backends."""
    calls = []

    def identity(x):
        calls.append(1)
        return x

    model = keras.Sequential([keras.Input((6,)), keras.layers.Dense(3), keras.layers.Lambda(identity)])
    x, y = toy_data(n=10)
    calls.clear()
    result = certify(model, (x, y), [0.01], lip_const=2.0, batch_size=4, verbose=False)
    expected = certified_radius(keras.ops.convert_to_numpy(model(x)), y, lip_const=2.0)
    np.testing.assert_allclose(result.radii, expected, rtol=1e-6)
    assert result.n_samples == 10
    compiled = keras.backend.backend() in ("tensorflow", "jax")
    assert len(calls) == (1 if compiled else 3) + 1  # + the eager reference call above
    certify(model, (x, y), [0.01], lip_const=2.0, batch_size=4, verbose=False)
    assert len(calls) == (1 if compiled else 6) + 1  # the compiled forward is reused


def test_certify_folds_input_scale_and_norm_conversions():
    model = dense_model()
    x, y = toy_data()
    base = certify(model, (x, y), 0.01, lip_const=2.0).radii
    np.testing.assert_allclose(certify(model, (x, y), 0.01, lip_const=2.0, input_scale=[0.3, 0.5]).radii, 0.3 * base)
    # An L2 bound certifies l_inf balls of radius r_2 / sqrt(d).
    np.testing.assert_allclose(
        certify(model, (x, y), 0.01, norm="linf", lip_const=2.0).radii, base / math.sqrt(6), rtol=1e-6
    )
    # An l_inf bound (l_inf-dist nets): margin / (2 L), valid for L2 balls too.
    margin_radius = certified_radius(keras.ops.convert_to_numpy(model(x)), y, "linf", 2.0)
    for norm in ("linf", "l2"):
        np.testing.assert_allclose(
            certify(model, (x, y), 0.01, norm=norm, lip_const=2.0, lip_norm="linf").radii, margin_radius, rtol=1e-6
        )


def test_certify_accepts_a_dataset_and_shows_a_progress_bar(capsys):
    import tensorflow as tf

    model = dense_model()
    x, y = toy_data(n=100)
    expected = certify(model, (x, y), [0.01], lip_const=2.0, verbose=False)
    assert capsys.readouterr().out == ""
    dataset = tf.data.Dataset.from_tensor_slices((x, y)).batch(10)
    result = certify(model, dataset, [0.01], lip_const=2.0)
    assert "10/10" in capsys.readouterr().out  # ten batches: progress bar on "auto"
    np.testing.assert_allclose(result.radii, expected.radii)
    batches = [(x[i : i + 30], y[i : i + 30]) for i in range(0, 100, 30)]
    np.testing.assert_allclose(certify(model, batches, [0.01], lip_const=2.0, verbose=False).radii, expected.radii)


def test_certify_computes_the_bound_of_a_plain_model():
    model = dense_model(activation="relu")
    x, y = toy_data()
    product = np.prod([np.linalg.norm(layer.get_weights()[0], 2) for layer in model.layers])
    result = certify(model, (x, y), [0.1])
    assert result.lip_const_source == "computed"
    assert result.lip_const == pytest.approx(product, rel=1e-5)


def test_certify_computes_the_bound_of_a_lipschitz_model():
    model = Sequential([keras.Input((6,)), layers.SpectralDense(8), layers.GroupSort2(), layers.SpectralDense(3)])
    x, y = toy_data()
    result = certify(model, (x, y), [0.1])
    assert 1 - 1e-3 <= result.lip_const <= 1 + 1e-3


@pytest.mark.parametrize(
    "unknown",
    [
        keras.layers.LayerNormalization(name="layer_norm"),
        keras.layers.Dense(16, activation="exponential", name="exp_dense"),
    ],
    ids=["LayerNormalization", "exponential"],
)
def test_certify_refuses_a_layer_with_unknown_constant(unknown):
    model = keras.Sequential([keras.Input((6,)), unknown, keras.layers.Dense(3)])
    x, y = toy_data()
    with pytest.raises(ValueError, match=unknown.name):
        certify(model, (x, y), [0.1])
    certify(model, (x, y), [0.1], lip_const=10.0)  # a user-given constant is the user's responsibility


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"epsilons": [0.1, -0.2]}, "epsilons"),
        ({"norm": "l1"}, "norm"),
        ({"lip_norm": "l3"}, "lip_norm"),
        ({"lip_const": -1.0}, "lip_const"),
        ({"input_scale": [0.2, 0.0]}, "input_scale"),
        ({"batch_size": 0}, "batch_size"),
        ({"data": (np.zeros((4, 6)), np.zeros(3, int))}, "same length"),
        ({"data": (np.zeros((4, 6)), np.zeros((4, 2)))}, "labels must have shape"),
        ({"data": (np.zeros((0, 6)), np.zeros(0, int))}, "empty"),
    ],
)
def test_certify_bad_input_raises(kwargs, match):
    arguments = {"model": dense_model(), "data": toy_data(), "epsilons": [0.1], "lip_const": 1.0}
    arguments.update(kwargs)
    with pytest.raises(ValueError, match=match):
        certify(**arguments)


def test_certify_result_prints_and_plots(tmp_path):
    model = dense_model()
    result = certify(model, toy_data(), [0.0, 0.02], lip_const=1.5)
    text = str(result)
    assert "clean accuracy" in text and "0.02" in text and f"{result.certified_accuracy[1]:7.2%}" in text
    path = result.plot(tmp_path / "curve.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# ------------------------------------------------------------------ lipschitz_bounds


def test_bounds_of_a_linear_model_are_tight():
    rng = np.random.default_rng(2)
    w = rng.normal(size=(5, 4)).astype("float32")
    model = keras.Sequential([keras.Input((5,)), keras.layers.Dense(4)])
    model.layers[0].set_weights([w, np.zeros(4, "float32")])
    lower, upper = lipschitz_bounds(model, rng.normal(size=(8, 5)), steps=10)
    assert upper == pytest.approx(np.linalg.norm(w, 2), rel=1e-5)
    assert lower == pytest.approx(upper, rel=1e-5)


def test_bounds_of_an_unconstrained_model_exceed_one():
    model = dense_model(seed=3)
    lower, upper = lipschitz_bounds(model, toy_data()[0], steps=20)
    assert upper > 1.0 and 0 < lower <= upper * (1 + 1e-5)


def _conv_stack(*body, shape=(8, 8, 2)):
    return [keras.Input(shape), *body]


LIPSCHITZ_MODELS = {
    "dense": lambda: [keras.Input((10,)), layers.SpectralDense(12), layers.GroupSort2(), layers.SpectralDense(4)],
    "frobenius_dense": lambda: [
        keras.Input((10,)),
        layers.SpectralDense(8),
        layers.FullSort(),
        layers.FrobeniusDense(1),
    ],
    "conv_same_maxmin": lambda: _conv_stack(
        layers.SpectralConv2D(4, 3, padding="same"),
        layers.MaxMinHalves(),
        keras.layers.Flatten(),
        layers.SpectralDense(3),
    ),
    "conv_valid_groupsort": lambda: _conv_stack(
        layers.SpectralConv2D(4, 3, padding="valid"),
        layers.GroupSort(n=4),
        keras.layers.Flatten(),
        layers.SpectralDense(3),
    ),
    "conv_circular_householder": lambda: _conv_stack(
        layers.SpectralConv2D(4, 3, padding="circular"), layers.Householder(), layers.ScaledGlobalL2NormPooling2D()
    ),
    "conv_strided_crelu": lambda: _conv_stack(
        layers.SpectralConv2D(4, 3, strides=2), layers.CReLU(), layers.ScaledGlobalAveragePooling2D()
    ),
    "frobenius_conv_pool": lambda: _conv_stack(
        layers.FrobeniusConv2D(2, 3), layers.ScaledAveragePooling2D(2), keras.layers.Flatten(), layers.FrobeniusDense(2)
    ),
    "downsampling_l2pool": lambda: _conv_stack(
        layers.InvertibleDownSampling(2),
        layers.SpectralConv2D(4, 1),
        layers.InvertibleUpSampling(2),
        layers.ScaledL2NormPooling2D(2),
        keras.layers.Flatten(),
        layers.SpectralDense(2),
    ),
}


@pytest.mark.parametrize("name", sorted(LIPSCHITZ_MODELS))
def test_lipschitz_sandwich_for_every_layer_type(name):
    model = Sequential(LIPSCHITZ_MODELS[name](), k_coef_lip=1.0)
    x = np.random.default_rng(4).uniform(size=(8, *model.inputs[0].shape[1:])).astype("float32")
    lower, upper = lipschitz_bounds(model, x, steps=15)
    assert 0 < lower <= upper * (1 + 1e-5), (lower, upper)  # float32 rounding of the Jacobian
    assert upper <= 1 + 1e-3, upper


def test_lipschitz_sandwich_with_a_global_constant():
    model = Sequential(LIPSCHITZ_MODELS["dense"](), k_coef_lip=2.0)
    lower, upper = lipschitz_bounds(model, np.random.default_rng(5).normal(size=(8, 10)), steps=15)
    assert lower <= upper * (1 + 1e-5) and upper <= 2 * (1 + 1e-3)
    assert lower > 1.0  # an orthogonal net: the bound is nearly reached
