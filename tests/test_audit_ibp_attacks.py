"""Defects an independent audit of IBP, attacks, measurements and callbacks found (TensorFlow, JAX, PyTorch).

Each test fails on the code before its fix: quantized models and subclassed final layers certified by
interval propagation, certificates for labels the model misclassifies by a rounding (float32 and float64),
attacks returning points outside the eps-ball for x outside the box, single-logit models read through an
argmax by the measurements, and callbacks that could not be built back from their config.
"""

import keras
import numpy as np
import pytest

from deel_lip_ext import attacks, callbacks
from deel_lip_ext.certification import certify
from deel_lip_ext.interval import chain_layers, elided_margins
from deel_lip_ext.layers.linf import LogitScale
from deel_lip_ext.linf import certify_ibp, ibp_margins
from deel_lip_ext.losses import ClippedHingeCrossEntropy
from deel_lip_ext.regularization import adversarial_distances, error_at_eps


def _dense_model(kernel, dtype="float32", extra=()):
    model = keras.Sequential(
        [keras.Input((kernel.shape[0],), dtype=dtype), keras.layers.Dense(kernel.shape[1], dtype=dtype), *extra]
    )
    model.layers[0].set_weights([kernel.astype(dtype), np.zeros(kernel.shape[1], dtype)])
    return model


def test_interval_certificates_refuse_a_quantized_model():
    # The int8 codes of diag(0.01, 1) are read as weights: x = (1, 0.5) is class 1, IBP said class 0 for sure.
    model = _dense_model(np.diag([0.01, 1.0]))
    model.quantize("int8")
    x = np.float32([[1.0, 0.5]])
    for check in (lambda: ibp_margins(model, x, [0], 0.1), lambda: certify(model, (x, np.float32([[1, 0]])), [0.1])):
        with pytest.raises(ValueError, match=r"quantized layers \['dense'\].*before quantizing"):
            check()


class NegatingDropout(keras.layers.Dropout):
    def call(self, inputs, training=None):
        return -inputs


class TemperatureScale(LogitScale):
    def call(self, inputs):
        return -3.0 * inputs


@pytest.mark.parametrize("last", [NegatingDropout(0.0), TemperatureScale()], ids=lambda layer: type(layer).__name__)
def test_interval_certificates_read_a_final_subclass_instead_of_dropping_it(last):
    model = _dense_model(np.eye(2), extra=(last,))
    x = np.float32([[0.9, 0.1]])  # logits (-0.9, -0.1) or (-2.7, -0.3): class 1
    with pytest.raises(Exception, match="NegatingDropout|TemperatureScale"):
        certify_ibp(model, x, [0], 0.1)


@pytest.mark.parametrize("dtype, spread", [("float32", 1e-6), ("float64", 1e-8)])
def test_no_interval_certificate_for_a_label_the_model_does_not_predict(dtype, spread):
    # Two nearly equal columns: the logits differ by a few roundings, and the propagated bound of
    # z_j - z_t, computed as (W_j - W_t) h, fell below the model's own W_j h - W_t h (or was rounded
    # to float32 for a float64 model): labels misclassified at x itself, ties included, were certified.
    rng = np.random.default_rng(1)
    for _ in range(150):
        column = rng.normal(size=4)
        model = _dense_model(np.stack([column, column + rng.normal(size=4) * spread], 1), dtype)
        x = rng.uniform(0, 1, (64, 4)).astype(dtype)
        logits = keras.ops.convert_to_numpy(model(x))
        not_predicted = np.where(logits[:, 0] > logits[:, 1], 1, 0)  # ties: class 0, which is not a strict win
        assert not certify_ibp(model, x, not_predicted, 1e-7 if dtype == "float32" else 1e-6).any()


def _evaluations_in_other_orders(kernel, bias, x, rng, orders):
    """z_j - z_t of a float32 Dense layer at x, each logit summed sequentially in `orders` random orders."""
    products = x[:, :, None].astype(np.float32) * kernel.astype(np.float32)  # (N, H, C), one rounding each
    results = []
    for _ in range(orders):
        logits = bias.astype(np.float32) + np.zeros(products[:, 0].shape, np.float32)
        for k in rng.permutation(kernel.shape[0]):
            logits = logits + products[:, k]  # float32 += float32: one rounding per term
        results.append(logits[:, 1:] - logits[:, :1])  # z_j - z_0, rounded once more
    return np.stack(results)


def test_interval_margins_cover_the_last_dense_layer_in_every_summation_order():
    # Columns 1 and 2 equal column 0 up to a few roundings: which label wins depends on the order the sums
    # are taken in (XLA picks it per batch size). At eps = 0 the margin bound must cover every order; the
    # bound's arithmetic alone (no rounding slack) is exceeded by some order, so the check can fail.
    rng = np.random.default_rng(4)
    column = rng.normal(size=64)
    kernel = np.stack([column, column * (1 + 1e-7), column + rng.normal(size=64) * 1e-7], 1).astype(np.float32)
    bias = np.float32([0.25, 0.25, 0.25])
    model = _dense_model(kernel)
    model.layers[0].set_weights([kernel, bias])
    x = rng.uniform(0, 1, (32, 64)).astype(np.float32)
    is_target = np.eye(3, dtype=bool)[np.zeros(32, int)]
    margins = ibp_margins(model, x, np.zeros(32, int), 0.0)[:, 1:]
    arithmetic = keras.ops.convert_to_numpy(elided_margins(chain_layers(model), x, x, is_target))[:, 1:]
    evaluated = _evaluations_in_other_orders(kernel, bias, x, rng, orders=200)
    assert np.all(evaluated <= margins)
    assert np.any(evaluated > arithmetic)
    # The slack is a few roundings of sum_k (|W_kj| + |W_k0|) |x_k| + |b_j| + |b_0|: it does not swallow margins.
    scale = x @ (np.abs(kernel[:, 1:]) + np.abs(kernel[:, :1])) + 0.5
    assert np.all(margins - arithmetic <= 2 * 200 * 2.0**-24 * scale)


def test_attacks_refuse_points_outside_the_box():
    model = _dense_model(np.eye(2))
    x = np.float32([[1.5, 0.0]])  # outside the default box [0, 1]: the clipped ball is around another point
    for attack in (attacks.pgd, attacks.fgsm):
        with pytest.raises(ValueError, match=r"outside \[clip_min, clip_max\] = \[0.0, 1.0\].*None"):
            attack(model, x, [0], eps=0.1)
    assert np.abs(attacks.fgsm(model, x, [0], eps=0.1, clip_max=None) - x).max() == pytest.approx(0.1)


def test_measurements_read_a_single_logit_as_a_binary_decision():
    model = _dense_model(np.float32([[1.0], [0.0]]))  # f = x0 (class 1 iff x0 > 0), shifted below
    model.layers[0].set_weights([np.float32([[1.0], [0.0]]), np.float32([-0.5])])
    x = np.float32([[0.9, 0.5], [0.8, 0.5], [0.1, 0.5], [0.7, 0.5]])
    labels = np.array([1, 1, 0, 1])  # all right: f = 0.4, 0.3, -0.4, 0.2
    assert error_at_eps(model, x, labels, 0.0, norm="linf") == 0.0
    assert error_at_eps(model, x, np.where(labels > 0, 1, -1), 0.25, norm="linf") == pytest.approx(0.25)
    distances = adversarial_distances(model, x, labels, norm="linf", max_epsilon=1.0, bisection_steps=8)
    np.testing.assert_allclose(distances, [0.4, 0.3, 0.4, 0.2], atol=1e-2)


@pytest.mark.parametrize(
    "callback",
    [
        callbacks.LossParamScheduler("alpha", [0.0, 1.0], [0, 10], step=3),
        callbacks.LossParamLog("alpha", rate=2),
        callbacks.CondenseCallback(on_epoch=False, on_batch=True),
        callbacks.MonitorCallback(["dense"], target="kernel", what="all"),
        callbacks.SVCMProjection(every_n_steps=7, on_epoch_end=False),
        callbacks.LpScheduler(8.0, 500.0, constant_epochs=2, growth_epochs=4, steps_per_epoch=10, initial_epoch=3),
    ],
    ids=lambda callback: type(callback).__name__,
)
def test_callbacks_are_built_back_from_their_config(callback):
    rebuilt = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(callback))
    assert type(rebuilt) is type(callback) and rebuilt.get_config() == callback.get_config()


def test_a_schedule_saved_without_its_followers_asks_for_them():
    scheduler = callbacks.LpScheduler(8.0, 500.0, steps_per_epoch=10, followers=[ClippedHingeCrossEntropy(0.1)])
    with pytest.raises(ValueError, match=r"LpScheduler was saved with `followers`.*followers=\["):
        keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(scheduler))
