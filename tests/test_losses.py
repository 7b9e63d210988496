"""Every loss against an independent numpy implementation of its formula, serialization, schedules."""

import math

import keras
import numpy as np
import pytest
from _backend import input_gradient

from deel_lip_ext import callbacks, losses
from deel_lip_ext.model import Sequential

EPS_KR = 1e-7


# ------------------------------------------------------------ numpy references (loops over samples)


def np_kr(y, f):
    """Per-sample B f (1[P]/(|P|+e) - 1[N]/(|N|+e)) averaged over columns."""
    n, c = f.shape
    out = np.zeros(n)
    for col in range(c):
        positives = y[:, col] == 1
        n_pos = positives.sum()
        for i in range(n):
            weight = 1 / (n_pos + EPS_KR) if positives[i] else -1 / (n - n_pos + EPS_KR)
            out[i] += n * f[i, col] * weight / c
    return out


def np_hinge(y, f, m):
    return np.array(
        [np.mean([max(0.0, m / 2 - (1 if yi > 0 else -1) * fi) for yi, fi in zip(yr, fr)]) for yr, fr in zip(y, f)]
    )


def np_multiclass_hinge(y, f, m):
    out = []
    for yr, fr in zip(y, f):
        t = int(np.argmax(yr))
        c = len(fr)
        others = [max(0.0, m / 2 + fr[j]) for j in range(c) if j != t]
        out.append(((c - 1) * max(0.0, m / 2 - fr[t]) + sum(others)) / c)
    return np.array(out)


def np_multi_margin(y, f, m):
    out = []
    for yr, fr in zip(y, f):
        t = int(np.argmax(yr))
        out.append(sum(max(0.0, m - fr[t] + fr[j]) for j in range(len(fr)) if j != t) / len(fr))
    return np.array(out)


def np_categorical_hinge(y, f, m):
    out = []
    for yr, fr in zip(y, f):
        t = int(np.argmax(yr))
        out.append(max(0.0, m - (fr[t] - max(fr[j] for j in range(len(fr)) if j != t))))
    return np.array(out)


def np_tau_cce(y, f, tau):
    out = []
    for yr, fr in zip(y, f):
        z = tau * fr.astype(np.float64)
        log_softmax = z - z.max() - np.log(np.sum(np.exp(z - z.max())))
        out.append(-log_softmax[int(np.argmax(yr))] / tau)
    return np.array(out)


def np_tau_bce(y, f, tau):
    p = 1 / (1 + np.exp(-tau * f.astype(np.float64)))
    t = (y > 0).astype(np.float64)
    return np.mean(-(t * np.log(p) + (1 - t) * np.log(1 - p)), axis=-1) / tau


# ------------------------------------------------------------ data


def binary_batch(rng, n=12, c=3, minus_one=False):
    y = rng.integers(0, 2, size=(n, c)).astype("float32")
    y[0] = 1
    y[1] = 0  # every column has both classes
    f = rng.normal(size=(n, c)).astype("float32")
    return (2 * y - 1 if minus_one else y), f


def multiclass_batch(rng, n=12, c=5, minus_one=False):
    labels = rng.integers(0, c, size=n)
    labels[:c] = np.arange(c)
    y = np.eye(c, dtype="float32")[labels]
    f = rng.normal(size=(n, c)).astype("float32") * 2
    return (2 * y - 1 if minus_one else y), f


BINARY_CASES = [
    ("KR", lambda: losses.KR(reduction="none"), lambda y, f: np_kr((y > 0).astype(float), f)),
    ("HingeMargin", lambda: losses.HingeMargin(1.4, reduction="none"), lambda y, f: np_hinge(y, f, 1.4)),
    (
        "HKR",
        lambda: losses.HKR(2.5, 2.0, reduction="none"),
        lambda y, f: -np_kr((y > 0).astype(float), f) + 2.5 * np_hinge(y, f, 2.0),
    ),
    (
        "TauBinaryCrossentropy",
        lambda: losses.TauBinaryCrossentropy(0.5, reduction="none"),
        lambda y, f: np_tau_bce(y, f, 0.5),
    ),
]

MULTICLASS_CASES = [
    ("MulticlassKR", lambda: losses.MulticlassKR(reduction="none"), lambda y, f: np_kr((y > 0).astype(float), f)),
    (
        "MulticlassHinge",
        lambda: losses.MulticlassHinge(1.3, reduction="none"),
        lambda y, f: np_multiclass_hinge(y, f, 1.3),
    ),
    (
        "MulticlassHKR",
        lambda: losses.MulticlassHKR(reduction="none"),
        lambda y, f: -np_kr((y > 0).astype(float), f) + 10.0 * np_multiclass_hinge(y, f, 1.0),
    ),
    ("MultiMargin", lambda: losses.MultiMargin(0.7, reduction="none"), lambda y, f: np_multi_margin(y, f, 0.7)),
    (
        "CategoricalHinge",
        lambda: losses.CategoricalHinge(1.1, reduction="none"),
        lambda y, f: np_categorical_hinge(y, f, 1.1),
    ),
    (
        "TauCategoricalCrossentropy",
        lambda: losses.TauCategoricalCrossentropy(2.0, reduction="none"),
        lambda y, f: np_tau_cce(y, f, 2.0),
    ),
]


def _check_against_reference(make_loss, reference, y, f):
    expected = reference(y, f)
    per_sample = np.asarray(make_loss()(y, f))
    np.testing.assert_allclose(per_sample, expected, rtol=1e-5, atol=1e-5)
    for reduction, reduce in (("sum_over_batch_size", np.mean), ("sum", np.sum)):
        loss = make_loss()
        loss.reduction = reduction
        np.testing.assert_allclose(float(loss(y, f)), reduce(expected), rtol=1e-5, atol=1e-5)
    weights = np.linspace(0.0, 2.0, len(y)).astype("float32")
    loss = make_loss()
    loss.reduction = "sum_over_batch_size"
    np.testing.assert_allclose(
        float(loss(y, f, sample_weight=weights)), np.mean(weights * expected), rtol=1e-5, atol=1e-5
    )


@pytest.mark.parametrize("minus_one", [False, True], ids=["labels01", "labels-11"])
@pytest.mark.parametrize("name,make_loss,reference", BINARY_CASES, ids=[c[0] for c in BINARY_CASES])
def test_binary_losses_match_numpy(name, make_loss, reference, minus_one):
    y, f = binary_batch(np.random.default_rng(1), minus_one=minus_one)
    _check_against_reference(make_loss, reference, y, f)


@pytest.mark.parametrize("minus_one", [False, True], ids=["labels01", "labels-11"])
@pytest.mark.parametrize("name,make_loss,reference", MULTICLASS_CASES, ids=[c[0] for c in MULTICLASS_CASES])
def test_multiclass_losses_match_numpy(name, make_loss, reference, minus_one):
    y, f = multiclass_batch(np.random.default_rng(2), minus_one=minus_one)
    _check_against_reference(make_loss, reference, y, f)


def test_label_conventions_give_identical_values():
    rng = np.random.default_rng(3)
    y, f = multiclass_batch(rng)
    for make_loss in [c[1] for c in MULTICLASS_CASES]:
        np.testing.assert_array_equal(np.asarray(make_loss()(y, f)), np.asarray(make_loss()(2 * y - 1, f)))
    yb, fb = binary_batch(rng)
    for make_loss in [c[1] for c in BINARY_CASES]:
        np.testing.assert_array_equal(np.asarray(make_loss()(yb, fb)), np.asarray(make_loss()(2 * yb - 1, fb)))


def test_sparse_tau_crossentropy_matches_numpy_and_dense_variant():
    y, f = multiclass_batch(np.random.default_rng(4))
    labels = np.argmax(y, axis=1)
    expected = np_tau_cce(y, f, 2.0)
    sparse = losses.TauSparseCategoricalCrossentropy(2.0, reduction="none")
    for shaped in (labels, labels[:, None], labels.astype("int32")):
        np.testing.assert_allclose(np.asarray(sparse(shaped, f)), expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(
        float(losses.TauSparseCategoricalCrossentropy(2.0)(labels, f)), expected.mean(), rtol=1e-5
    )


def test_kr_all_positive_batch():
    """No negatives in a column: the negative mean is 0, the positive one the mean of f."""
    f = np.random.default_rng(5).normal(size=(6, 2)).astype("float32")
    y = np.ones((6, 2), "float32")
    per_sample = np.asarray(losses.KR(reduction="none")(y, f))
    np.testing.assert_allclose(per_sample, np_kr(y, f), rtol=1e-6)
    np.testing.assert_allclose(float(losses.KR()(y, f)), f.mean(), rtol=1e-5)
    assert np.isfinite(float(losses.HKR(alpha=5.0)(y, f)))


def test_kr_estimates_the_gap_between_class_means():
    rng = np.random.default_rng(6)
    y = np.array([[1], [1], [0], [0], [0]], "float32")
    f = rng.normal(size=(5, 1)).astype("float32")
    np.testing.assert_allclose(float(losses.KR()(y, f)), f[:2].mean() - f[2:].mean(), rtol=1e-5)


def test_margins_exactly_at_the_threshold_cost_nothing():
    m = 0.75
    # Hinge: s f == m / 2.
    assert float(losses.HingeMargin(m)(np.array([[1.0], [-1.0]]), np.array([[m / 2], [-m / 2]]))) == 0.0
    # Multi-class: f_y - f_j == m for every j (MultiMargin, CategoricalHinge), f_y = m/2, f_j = -m/2 (MulticlassHinge).
    y = np.array([[0.0, 1.0, 0.0]])
    f = np.array([[-m / 2, m / 2, -m / 2]])
    assert float(losses.MultiMargin(m)(y, f)) == 0.0
    assert float(losses.CategoricalHinge(m)(y, f)) == 0.0
    assert float(losses.MulticlassHinge(m)(y, f)) == 0.0
    # Just inside the margin the loss is positive.
    assert float(losses.CategoricalHinge(m)(y, f * 0.99)) > 0.0


def test_categorical_hinge_with_all_negative_logits():
    """The max over the other logits must ignore the target (not take a masked 0)."""
    y = np.array([[1.0, 0.0, 0.0]])
    f = np.array([[-1.0, -3.0, -2.5]])
    np.testing.assert_allclose(float(losses.CategoricalHinge(1.0)(y, f)), max(0.0, 1.0 - (-1.0 + 2.5)))


def test_hkr_alpha_limits():
    y, f = binary_batch(np.random.default_rng(7))
    hinge = losses.HingeMargin(1.0, reduction="none")(y, f)
    kr = losses.KR(reduction="none")(y, f)
    np.testing.assert_allclose(np.asarray(losses.HKR(math.inf, reduction="none")(y, f)), np.asarray(hinge))
    np.testing.assert_allclose(np.asarray(losses.HKR(0.0, reduction="none")(y, f)), -np.asarray(kr))
    ym, fm = multiclass_batch(np.random.default_rng(8))
    np.testing.assert_allclose(
        np.asarray(losses.MulticlassHKR(math.inf, reduction="none")(ym, fm)),
        np.asarray(losses.MulticlassHinge(1.0, reduction="none")(ym, fm)),
    )


def test_hkr_infinite_alpha_has_finite_gradient():
    y, f = multiclass_batch(np.random.default_rng(9))
    loss = losses.MulticlassHKR(alpha=math.inf)
    assert np.all(np.isfinite(input_gradient(lambda logits: loss(y, logits), f)))


def test_multi_gpu_labels_sum_over_uneven_minibatches():
    y, f = multiclass_batch(np.random.default_rng(10), n=15)
    expected = float(losses.MulticlassHKR(alpha=3.0, min_margin=0.5)(y, f))
    processed = np.asarray(losses.process_labels_for_multi_gpu(y))
    loss = losses.MulticlassHKR(alpha=3.0, min_margin=0.5, multi_gpu=True, reduction="sum")
    total = sum(float(loss(processed[a:b], f[a:b])) for a, b in ((0, 4), (4, 11), (11, 15)))
    np.testing.assert_allclose(total / len(y), expected, rtol=1e-5)


def test_multilabel_kr_is_the_mean_of_single_label_kr():
    y, f = binary_batch(np.random.default_rng(11), c=3)
    per_column = [float(losses.HKR(2.0)(y[:, i : i + 1], f[:, i : i + 1])) for i in range(3)]
    np.testing.assert_allclose(float(losses.HKR(2.0)(y, f)), np.mean(per_column), rtol=1e-5)


ALL_LOSSES = [
    losses.KR(),
    losses.HKR(alpha=2.5, min_margin=0.3),
    losses.HingeMargin(min_margin=0.8),
    losses.TauBinaryCrossentropy(tau=3.0),
]
ALL_MULTICLASS_LOSSES = [
    losses.MulticlassKR(),
    losses.MulticlassHinge(min_margin=0.6),
    losses.MulticlassHKR(alpha=4.0, min_margin=0.5),
    losses.MultiMargin(min_margin=0.7),
    losses.CategoricalHinge(min_margin=0.9),
    losses.TauCategoricalCrossentropy(tau=5.0),
]


def test_configs_are_plain_and_round_trip():
    for loss in ALL_LOSSES + ALL_MULTICLASS_LOSSES + [losses.TauSparseCategoricalCrossentropy(tau=2.0)]:
        config = loss.get_config()
        for key, value in config.items():
            assert value is None or isinstance(value, (str, float, bool)), (type(loss).__name__, key, value)
        clone = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(loss))
        assert type(clone) is type(loss) and clone.get_config() == config


@pytest.mark.parametrize(
    "loss,multiclass",
    [(loss, False) for loss in ALL_LOSSES]
    + [(loss, True) for loss in ALL_MULTICLASS_LOSSES]
    + [(losses.TauSparseCategoricalCrossentropy(tau=2.0), "sparse")],
    ids=lambda v: type(v).__name__ if not isinstance(v, (bool, str)) else str(v),
)
def test_serialization_inside_a_compiled_model(loss, multiclass, tmp_path):
    rng = np.random.default_rng(12)
    outputs = 4 if multiclass else 1
    x = rng.normal(size=(32, 6)).astype("float32")
    if multiclass:
        labels = rng.integers(0, outputs, 32)
        y = labels if multiclass == "sparse" else np.eye(outputs, dtype="float32")[labels]
    else:
        y = rng.integers(0, 2, (32, 1)).astype("float32")
    model = keras.Sequential([keras.Input((6,)), keras.layers.Dense(8, activation="relu"), keras.layers.Dense(outputs)])
    model.compile(optimizer="sgd", loss=loss)
    before = model.evaluate(x, y, verbose=0)
    path = tmp_path / "model.keras"
    model.save(path)
    restored = keras.models.load_model(path)
    assert type(restored.loss) is type(loss)
    assert restored.loss.get_config() == loss.get_config()
    np.testing.assert_allclose(restored.evaluate(x, y, verbose=0), before, rtol=1e-6)


@pytest.mark.parametrize(
    "factory",
    [
        lambda: losses.HingeMargin(min_margin=-1.0),
        lambda: losses.HKR(alpha=-0.5),
        lambda: losses.MulticlassHKR(min_margin=float("nan")),
        lambda: losses.TauCategoricalCrossentropy(tau=0.0),
        lambda: losses.TauBinaryCrossentropy(tau=-2.0),
        lambda: losses.KR(reduction="average"),
    ],
)
def test_bad_hyper_parameters_raise(factory):
    with pytest.raises(ValueError):
        factory()


def _frozen_zero_model():
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(1, kernel_initializer="zeros")])
    model.trainable = False
    return model


def test_loss_param_scheduler_changes_the_compiled_loss():
    """A frozen model outputs 0, so HingeMargin = m/2: the logged losses follow the schedule."""
    model = _frozen_zero_model()
    model.compile(optimizer="sgd", loss=losses.HingeMargin(min_margin=0.0))
    scheduler = callbacks.LossParamScheduler("min_margin", fp=[0.0, 4.0], xp=[0, 4])
    x = np.ones((8, 3), "float32")
    y = np.ones((8, 1), "float32")
    history = model.fit(x, y, batch_size=8, epochs=6, callbacks=[scheduler], verbose=0)
    np.testing.assert_allclose(history.history["loss"], [0.0, 0.5, 1.0, 1.5, 2.0, 2.0], atol=1e-6)
    assert scheduler.step == 6
    assert model.loss.get_config()["min_margin"] == 4.0


def test_loss_param_scheduler_changes_the_loss_between_batches_of_an_epoch():
    """Four batches per epoch, a new margin every batch: each batch's loss is its own m/2 (JAX carries the state)."""
    model = _frozen_zero_model()
    model.compile(optimizer="sgd", loss=losses.HingeMargin(min_margin=0.0))
    scheduler = callbacks.LossParamScheduler("min_margin", fp=[0.0, 6.0], xp=[0, 6])
    batch_losses = []
    record = keras.callbacks.LambdaCallback(on_train_batch_end=lambda batch, logs: batch_losses.append(logs["loss"]))
    x = np.ones((8, 3), "float32")
    y = np.ones((8, 1), "float32")
    model.fit(x, y, batch_size=2, epochs=2, shuffle=False, callbacks=[scheduler, record], verbose=0)
    # The logged loss is the running mean of the epoch's batch losses m_k / 2, m_k = min(k, 6).
    margins = np.minimum(np.arange(8), 6.0) / 2.0
    expected = [margins[e * 4 : e * 4 + b + 1].mean() for e in range(2) for b in range(4)]
    np.testing.assert_allclose(batch_losses, expected, atol=1e-6)
    assert model.loss.get_config()["min_margin"] == 6.0


def test_multiclass_soft_hkr_running_mean_moves_during_fit():
    """A frozen zero model gives mean|f| = 0, so every training batch multiplies the running mean by alpha_mean."""
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(4, kernel_initializer="zeros")])
    model.trainable = False
    loss = losses.MulticlassSoftHKR(min_margin=1.0, alpha_mean=0.8)
    model.compile(optimizer="sgd", loss=loss)
    losses.carry_loss_state(model)
    x = np.ones((8, 3), "float32")
    y = np.eye(4, dtype="float32")[[0, 1, 2, 3] * 2]
    history = model.fit(x, y, batch_size=2, epochs=2, verbose=0)
    np.testing.assert_allclose(float(loss.current_mean), 0.8**8, rtol=1e-6)
    assert set(history.history) == {"loss"}  # the carried state adds no log entry
    model.evaluate(x, y, batch_size=4, verbose=0)
    np.testing.assert_allclose(float(loss.current_mean), 0.8**10, rtol=1e-6)


def test_multiclass_soft_hkr_running_mean_moves_in_a_lipschitz_model_without_callbacks():
    """deel_lip_ext's Sequential carries the loss's state from `compile` (JAX needs it; no user call)."""
    model = Sequential([keras.Input((3,)), keras.layers.Dense(4, kernel_initializer="zeros")])
    model.trainable = False
    loss = losses.MulticlassSoftHKR(min_margin=1.0, alpha_mean=0.8)
    model.compile(optimizer="sgd", loss=loss)
    x = np.ones((8, 3), "float32")
    y = np.eye(4, dtype="float32")[[0, 1, 2, 3] * 2]
    model.fit(x, y, batch_size=2, epochs=1, verbose=0)
    np.testing.assert_allclose(float(loss.current_mean), 0.8**4, rtol=1e-6)


def test_loss_param_scheduler_and_log_errors_and_output(capsys):
    model = _frozen_zero_model()
    model.compile(optimizer="sgd", loss=losses.HKR(alpha=2.0))
    log = callbacks.LossParamLog("alpha", rate=1)
    model.fit(np.ones((4, 3)), np.ones((4, 1)), epochs=1, callbacks=[log], verbose=0)
    assert "alpha = 2" in capsys.readouterr().out
    with pytest.raises(ValueError, match="tau"):
        model.fit(
            np.ones((4, 3)), np.ones((4, 1)), callbacks=[callbacks.LossParamScheduler("tau", [1.0], [0])], verbose=0
        )
    with pytest.raises(ValueError, match="xp"):
        callbacks.LossParamScheduler("alpha", fp=[1.0, 2.0], xp=[5, 0])
    with pytest.raises(ValueError, match="rate"):
        callbacks.LossParamLog("alpha", rate=0)
