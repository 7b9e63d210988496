"""Every loss checks the shapes of its labels and predictions: nothing is broadcast, integer labels are explicit."""

import keras
import numpy as np
import pytest

from deel_lip_ext import losses

BINARY = [
    lambda: losses.KR(),
    lambda: losses.HKR(alpha=10.0),
    lambda: losses.HingeMargin(),
    lambda: losses.TauBinaryCrossentropy(tau=2.0),
]
ONE_HOT = [
    lambda: losses.MulticlassKR(),
    lambda: losses.MulticlassHKR(),
    lambda: losses.MulticlassHinge(),
    lambda: losses.MultiMargin(),
    lambda: losses.CategoricalHinge(min_margin=1.0),
    lambda: losses.TauCategoricalCrossentropy(tau=2.0),
    lambda: losses.MulticlassSoftHKR(),
    lambda: losses.SoftHKR(),
    lambda: losses.LseHKR(),
    lambda: losses.EMMA(epsilon=0.1),
    lambda: losses.LogitAnnealing(epsilon=0.1),
]
LINF = [
    lambda: losses.LInfDistHinge(eps=0.1),
    lambda: losses.ClippedHingeCrossEntropy(eps=0.1),
    lambda: losses.HybridIntervalCrossEntropy([keras.layers.Dense(4, kernel_initializer="ones")], eps=0.1),
]


def _binary_batch(n=6, seed=0):
    rng = np.random.default_rng(seed)
    labels = np.array([1, 0, 1, 1, 0, 0][:n], "float32")
    return labels, rng.normal(size=(n, 1)).astype("float32")


@pytest.mark.parametrize("make_loss", BINARY)
def test_binary_labels_n_against_logits_n_1_equal_labels_n_1(make_loss):
    labels, logits = _binary_batch()
    flat, column = make_loss()(labels, logits), make_loss()(labels[:, None], logits)
    np.testing.assert_allclose(float(flat), float(column), rtol=1e-6)
    per_sample = make_loss().__class__.from_config({**make_loss().get_config(), "reduction": "none"})
    assert tuple(per_sample(labels, logits).shape) == (len(labels),)


def test_hkr_labels_n_against_logits_n_1_is_not_an_n_by_n_loss():
    labels, logits = _binary_batch()
    hinge_only = losses.HKR(alpha=float("inf"), min_margin=1.0)
    expected = np.mean(np.maximum(0.0, 0.5 - np.where(labels > 0, 1.0, -1.0) * logits[:, 0]))
    np.testing.assert_allclose(float(hinge_only(labels, logits)), expected, rtol=1e-6)


@pytest.mark.parametrize("make_loss", BINARY)
def test_binary_losses_refuse_other_shapes(make_loss):
    rng = np.random.default_rng(1)
    with pytest.raises(ValueError, match="do not match predictions"):
        make_loss()(np.ones((6, 1), "float32"), rng.normal(size=(6, 3)).astype("float32"))
    with pytest.raises(ValueError, match="do not match predictions"):
        make_loss()(np.ones((4, 1), "float32"), rng.normal(size=(6, 1)).astype("float32"))


@pytest.mark.parametrize("make_loss", ONE_HOT)
@pytest.mark.parametrize("label_shape", [(6,), (6, 1)])
def test_one_hot_losses_refuse_integer_labels(make_loss, label_shape):
    logits = np.random.default_rng(2).normal(size=(6, 4)).astype("float32")
    labels = np.array([0, 3, 1, 2, 2, 1]).reshape(label_shape)
    with pytest.raises(ValueError, match="one-hot encode them"):
        make_loss()(labels, logits)


@pytest.mark.parametrize("make_loss", ONE_HOT)
def test_one_hot_losses_refuse_a_wrong_number_of_classes_and_accept_one_hot(make_loss):
    logits = np.random.default_rng(3).normal(size=(6, 4)).astype("float32")
    with pytest.raises(ValueError, match="do not match predictions"):
        make_loss()(np.eye(3, dtype="float32")[[0, 1, 2, 0, 1, 2]], logits)
    assert np.isfinite(float(make_loss()(np.eye(4, dtype="float32")[[0, 3, 1, 2, 2, 1]], logits)))


@pytest.mark.parametrize("make_loss", ONE_HOT)
def test_one_hot_losses_refuse_predictions_with_a_class_axis_of_size_1(make_loss):
    # (N, C, 1) logits with (N, C, 1) labels: every entry would be a one-class problem (loss 0 for EMMA / CE).
    onehot = np.eye(4, dtype="float32")[[0, 3, 1, 2, 2, 1]]
    logits = np.random.default_rng(8).normal(size=(6, 4)).astype("float32")
    with pytest.raises(ValueError, match="class axis"):
        make_loss()(onehot[:, :, None], logits[:, :, None])


def test_sparse_cross_entropy_refuses_one_hot_labels():
    logits = np.random.default_rng(4).normal(size=(6, 4)).astype("float32")
    with pytest.raises(ValueError, match="use TauCategoricalCrossentropy"):
        losses.TauSparseCategoricalCrossentropy(tau=2.0)(np.eye(4, dtype="float32")[[0, 3, 1, 2, 2, 1]], logits)


@pytest.mark.parametrize("make_loss", LINF)
def test_linf_losses_refuse_labels_of_another_number_of_classes(make_loss):
    logits = np.random.default_rng(5).normal(size=(6, 4)).astype("float32")
    with pytest.raises(ValueError, match="labels"):
        make_loss()(np.eye(3, dtype="float32")[[0, 1, 2, 0, 1, 2]], logits)
    with pytest.raises(ValueError, match="labels"):
        make_loss()(np.zeros((5,), "int32"), logits)
    indices = np.array([0, 3, 1, 2, 2, 1])
    np.testing.assert_allclose(
        float(make_loss()(indices, logits)), float(make_loss()(np.eye(4, dtype="float32")[indices], logits)), rtol=1e-6
    )


@pytest.mark.parametrize("make_loss", ONE_HOT)
def test_fit_with_integer_labels_gives_the_clear_error(make_loss):
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(4)])
    model.compile("sgd", loss=make_loss())
    rng = np.random.default_rng(6)
    x, y = rng.normal(size=(8, 3)).astype("float32"), rng.integers(0, 4, size=(8, 1))
    with pytest.raises(ValueError, match="one-hot encode them"):
        model.fit(x, y, epochs=1, verbose=0)


def test_fit_binary_hkr_with_flat_labels_trains_on_the_right_loss():
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(1, use_bias=False)])
    model.compile("sgd", loss=losses.HKR(alpha=float("inf")))
    rng = np.random.default_rng(7)
    x, y = rng.normal(size=(8, 3)).astype("float32"), rng.integers(0, 2, size=(8,)).astype("float32")
    loss = model.evaluate(x, y, batch_size=8, verbose=0)
    logits = model.predict(x, verbose=0)[:, 0]
    np.testing.assert_allclose(loss, np.mean(np.maximum(0.0, 0.5 - np.where(y > 0, 1.0, -1.0) * logits)), rtol=1e-5)
