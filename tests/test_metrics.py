"""Certified-robustness metrics against the radius formula, label conventions, serialization."""

import math

import keras
import numpy as np
import pytest

from deel_lip_ext import metrics


def np_margin(labels, f):
    return np.array([f[i, t] - np.max(np.delete(f[i], t)) for i, t in enumerate(labels)])


def batch(seed=0, n=40, c=4):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, c, n)
    f = rng.normal(size=(n, c)).astype("float32") * 2
    return labels, np.eye(c, dtype="float32")[labels], f


def result(metric, y, f, sample_weight=None):
    metric.update_state(y, f, sample_weight=sample_weight)
    return float(metric.result())


@pytest.mark.parametrize(
    "norm,disjoint,factor", [("l2", False, math.sqrt(2)), ("l2", True, 2.0), ("linf", False, 2.0), ("linf", True, 2.0)]
)
@pytest.mark.parametrize("epsilon", [0.0, 0.3, 1.0])
def test_certified_accuracy_matches_formula(norm, disjoint, factor, epsilon):
    labels, onehot, f = batch()
    lip = 1.7
    expected = np.mean(np_margin(labels, f) / (factor * lip) > epsilon)
    for y in (onehot, 2 * onehot - 1, labels, labels[:, None]):
        metric = metrics.CertifiedAccuracy(epsilon, norm=norm, lip_const=lip, disjoint_neurons=disjoint)
        assert result(metric, y, f) == pytest.approx(expected, abs=1e-7)


def test_certified_accuracy_accumulates_batches_with_sample_weights():
    labels, onehot, f = batch(1)
    weights = np.linspace(0, 1, len(labels)).astype("float32")
    certified = np_margin(labels, f) / math.sqrt(2) > 0.2
    metric = metrics.CertifiedAccuracy(0.2)
    metric.update_state(onehot[:15], f[:15], sample_weight=weights[:15])
    metric.update_state(onehot[15:], f[15:], sample_weight=weights[15:])
    assert float(metric.result()) == pytest.approx(np.sum(weights * certified) / np.sum(weights), rel=1e-6)


def test_deel_lip_alias_keeps_deel_lip_defaults():
    labels, onehot, f = batch(2)
    alias = metrics.CategoricalProvableRobustAccuracy(epsilon=0.25)
    assert alias.disjoint_neurons is True and alias.lip_const == 1.0
    assert result(alias, onehot, f) == pytest.approx(np.mean(np_margin(labels, f) / 2 > 0.25))
    # deel-lip's equivalence: margin * (sqrt(2)/2) / sqrt(2) == margin / 2.
    not_disjoint = metrics.CategoricalProvableRobustAccuracy(epsilon=0.25, disjoint_neurons=False)
    disjoint = metrics.CategoricalProvableRobustAccuracy(epsilon=0.25, disjoint_neurons=True)
    assert result(not_disjoint, onehot, f * math.sqrt(2) / 2) == result(disjoint, onehot, f)


def test_avg_robustness_matches_formula():
    labels, onehot, f = batch(3)
    margin = np_margin(labels, f)
    relu = metrics.CategoricalProvableAvgRobustness(lip_const=2.0, disjoint_neurons=False)
    signed = metrics.CategoricalProvableAvgRobustness(lip_const=2.0, disjoint_neurons=False, negative_robustness=True)
    assert result(relu, onehot, f) == pytest.approx(np.mean(np.maximum(margin, 0) / (2 * math.sqrt(2))), rel=1e-5)
    assert result(signed, 2 * onehot - 1, f) == pytest.approx(np.mean(margin / (2 * math.sqrt(2))), rel=1e-5)
    # Equal when every sample is correctly classified, different otherwise.
    correct_f = onehot * 5.0
    for y, logits, same in ((onehot, correct_f, True), (onehot, f, False)):
        a = result(metrics.CategoricalProvableAvgRobustness(), y, logits)
        b = result(metrics.CategoricalProvableAvgRobustness(negative_robustness=True), y, logits)
        assert (a == pytest.approx(b)) is same


@pytest.mark.parametrize("labels01", [True, False])
def test_binary_metrics_match_formula(labels01):
    rng = np.random.default_rng(4)
    f = rng.normal(size=(30, 1)).astype("float32")
    positive = rng.integers(0, 2, (30, 1))
    y = positive if labels01 else 2 * positive - 1
    signed = np.where(positive > 0, 1.0, -1.0)[:, 0] * f[:, 0]
    lip = 0.8
    acc = metrics.BinaryProvableRobustAccuracy(epsilon=0.4, lip_const=lip)
    assert result(acc, y, f) == pytest.approx(np.mean(signed / lip > 0.4))
    avg = metrics.BinaryProvableAvgRobustness(lip_const=lip)
    assert result(avg, y, f) == pytest.approx(np.mean(np.maximum(signed, 0) / lip), rel=1e-5)
    neg = metrics.BinaryProvableAvgRobustness(lip_const=lip, negative_robustness=True)
    assert result(neg, y, f) == pytest.approx(np.mean(signed / lip), rel=1e-5)
    # CertifiedAccuracy handles a single logit the same way.
    assert result(metrics.CertifiedAccuracy(0.4, lip_const=lip), y, f) == result(
        metrics.BinaryProvableRobustAccuracy(epsilon=0.4, lip_const=lip), y, f
    )


def test_ties_and_misclassified_points_are_not_certified():
    y = np.array([0, 0, 1])
    f = np.array([[1.0, 1.0, 0.0], [0.0, 2.0, 0.0], [0.0, 3.0, 1.0]], "float32")
    assert result(metrics.CertifiedAccuracy(0.0), y, f) == pytest.approx(1 / 3)
    assert result(metrics.CategoricalProvableAvgRobustness(disjoint_neurons=False), y, f) == pytest.approx(
        2 / math.sqrt(2) / 3
    )


@pytest.mark.parametrize(
    "factory,match",
    [
        (lambda: metrics.CertifiedAccuracy(-0.1), "epsilon"),
        (lambda: metrics.CertifiedAccuracy(0.1, norm="l1"), "norm"),
        (lambda: metrics.CertifiedAccuracy(0.1, lip_const=0.0), "lip_const"),
        (lambda: metrics.BinaryProvableAvgRobustness(lip_const=-1.0), "lip_const"),
    ],
)
def test_bad_arguments_raise(factory, match):
    with pytest.raises(ValueError, match=match):
        factory()


def test_wrong_label_or_output_shapes_raise():
    _, onehot, f = batch(5, c=4)
    with pytest.raises(ValueError, match="y_true"):
        metrics.CertifiedAccuracy(0.1).update_state(onehot[:, :3], f)
    with pytest.raises(ValueError, match="single-logit"):
        metrics.BinaryProvableRobustAccuracy(0.1).update_state(onehot, f)
    with pytest.raises(ValueError, match="multi-class"):
        metrics.CategoricalProvableAvgRobustness().update_state(onehot[:, :1], f[:, :1])


def test_serialization_inside_a_compiled_model(tmp_path):
    rng = np.random.default_rng(6)
    x = rng.normal(size=(64, 5)).astype("float32")
    labels = rng.integers(0, 3, 64)
    y = np.eye(3, dtype="float32")[labels]
    model = keras.Sequential([keras.Input((5,)), keras.layers.Dense(3)])
    model.compile(
        optimizer="sgd",
        loss="categorical_crossentropy",
        metrics=[
            metrics.CertifiedAccuracy(0.1, norm="linf", lip_const=2.0, name="vra"),
            metrics.CategoricalProvableRobustAccuracy(epsilon=0.05, lip_const=1.5),
            metrics.CategoricalProvableAvgRobustness(lip_const=3.0, negative_robustness=True),
        ],
    )
    before = model.evaluate(x, y, verbose=0, return_dict=True)
    model.save(tmp_path / "multi.keras")
    restored = keras.models.load_model(tmp_path / "multi.keras")
    assert restored.evaluate(x, y, verbose=0, return_dict=True) == before

    binary = keras.Sequential([keras.Input((5,)), keras.layers.Dense(1)])
    binary.compile(
        optimizer="sgd",
        loss="mse",
        metrics=[
            metrics.BinaryProvableRobustAccuracy(epsilon=0.2, lip_const=0.5),
            metrics.BinaryProvableAvgRobustness(lip_const=0.5),
        ],
    )
    yb = (labels[:, None] > 0).astype("float32")
    before = binary.evaluate(x, yb, verbose=0, return_dict=True)
    binary.save(tmp_path / "binary.keras")
    assert keras.models.load_model(tmp_path / "binary.keras").evaluate(x, yb, verbose=0, return_dict=True) == before


def test_metric_configs_round_trip():
    for metric in (
        metrics.CertifiedAccuracy(0.3, norm="linf", lip_const=2.0, disjoint_neurons=True),
        metrics.CategoricalProvableRobustAccuracy(0.1),
        metrics.BinaryProvableRobustAccuracy(0.2, lip_const=3.0),
        metrics.CategoricalProvableAvgRobustness(negative_robustness=True),
        metrics.BinaryProvableAvgRobustness(lip_const=0.5),
    ):
        clone = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(metric))
        assert type(clone) is type(metric) and clone.get_config() == metric.get_config()


def test_half_precision_logits_are_accepted():
    """Mixed-precision models return float16 logits; the radius is computed in float32."""
    labels, onehot, f = batch(7)
    f16 = f.astype("float16")
    expected = np.mean(np_margin(labels, f16.astype("float32")) / math.sqrt(2) > 0.3)
    assert result(metrics.CertifiedAccuracy(0.3), onehot, f16) == pytest.approx(expected)
