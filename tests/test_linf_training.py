"""l_inf-dist nets: p schedule, v1 / v2 / hybrid losses, interval bound propagation, certification.

The demo (demos/linf_mnist.py) is tested in test_demos.py.
"""

import math

import keras
import numpy as np
import pytest
from keras import ops

from deel_lip_ext import linf, zoo
from deel_lip_ext.attacks import pgd
from deel_lip_ext.interval import chain_layers, elided_margins
from deel_lip_ext.layers import LInfDistConv2D, LInfDistDense, LogitScale


# ---------------------------------------------------------------- schedule


def test_schedule_values():
    assert linf.scheduled_p(0.0) == 8.0
    assert linf.scheduled_p(0.5) == pytest.approx(math.sqrt(8 * 1000))
    assert linf.scheduled_p(0.999) == pytest.approx(8 * 125**0.999)
    assert linf.scheduled_p(1.0) == math.inf
    assert linf.scheduled_p(1.0, p_end=50.0) == 50.0  # below the threshold the papers keep p_end
    assert linf.schedule_ratio(39, steps_per_epoch=10, constant_epochs=4, growth_epochs=2) == 0.0
    assert linf.schedule_ratio(50, steps_per_epoch=10, constant_epochs=4, growth_epochs=2) == 0.5
    assert linf.schedule_ratio(70, steps_per_epoch=10, constant_epochs=4, growth_epochs=2) == 1.0


class _Recorder(keras.callbacks.Callback):
    def __init__(self):
        super().__init__()
        self.p_values = []

    def on_train_batch_begin(self, batch, logs=None):
        self.p_values.append([layer.p for layer in linf.distance_layers(self.model)])


class _Follower:
    def __init__(self):
        self.ratios = []

    def set_progress(self, ratio):
        self.ratios.append(ratio)


def test_lp_scheduler_updates_every_layer_every_batch():
    model = zoo.linf_dist_net(depth=3, width=8, input_shape=(5,), num_classes=3, p=2.0)
    model.compile("adam", loss=linf.LInfDistHinge(0.1))
    follower, recorder = _Follower(), _Recorder()
    scheduler = linf.LpScheduler(8.0, 1000.0, constant_epochs=1, growth_epochs=2, followers=[follower])
    x = np.random.default_rng(0).normal(size=(16, 5)).astype("float32")
    history = model.fit(x, np.arange(16) % 3, batch_size=4, epochs=4, callbacks=[scheduler, recorder], verbose=0)
    ratios = np.clip((np.arange(16) - 4) / 8, 0, 1)
    expected = [math.inf if r >= 1 else 8 * 125**r for r in ratios]
    assert follower.ratios == pytest.approx(ratios.tolist())
    for step, values in enumerate(recorder.p_values):
        assert values == pytest.approx([expected[step]] * 3, rel=1e-6)
    assert history.history["p"] == pytest.approx([expected[3], expected[7], expected[11], math.inf])


def test_lp_scheduler_rejects_bad_arguments():
    with pytest.raises(ValueError, match="growth_epochs"):
        linf.LpScheduler(growth_epochs=0)
    with pytest.raises(ValueError, match="p_start and p_end must be finite"):
        linf.LpScheduler(p_end=math.inf)
    with pytest.raises(TypeError, match="set_progress"):
        linf.LpScheduler(followers=[object()])
    with pytest.raises(ValueError, match="steps_per_epoch"):
        linf.LpScheduler(steps_per_epoch=0)


# ---------------------------------------------------------------- losses

LOGITS = np.array([[3.0, 1.0, 2.5], [0.0, 2.0, -1.0], [1.0, 1.0, 4.0]], "float32")
LABELS = np.array([0, 2, 2])


def numpy_margins(logits, labels, eps):
    margins = logits - logits[np.arange(len(labels)), labels][:, None] + 2 * eps
    margins[np.arange(len(labels)), labels] = 0.0
    return margins


def numpy_cross_entropy(logits, labels):
    shifted = logits - logits.max(axis=1, keepdims=True)
    return np.log(np.exp(shifted).sum(axis=1)) - shifted[np.arange(len(labels)), labels]


def test_worst_case_margins_with_sparse_and_one_hot_labels():
    expected = numpy_margins(LOGITS, LABELS, 0.4)
    np.testing.assert_allclose(ops.convert_to_numpy(linf.worst_case_margins(LABELS, LOGITS, 0.4)), expected)
    one_hot = np.eye(3, dtype="float32")[LABELS]
    np.testing.assert_allclose(ops.convert_to_numpy(linf.worst_case_margins(one_hot, LOGITS, 0.4)), expected)


@pytest.mark.parametrize("mix", [0.75, 1.0])
def test_v1_hinge_matches_numpy(mix):
    violations = np.maximum(numpy_margins(LOGITS, LABELS, 0.4), 0)
    expected = np.mean(mix * violations.max(axis=1) + (1 - mix) * violations.mean(axis=1))
    loss = linf.LInfDistHinge(eps=0.4, mix=mix)
    assert float(loss(LABELS, LOGITS)) == pytest.approx(expected, rel=1e-6)


def test_v2_loss_matches_numpy_and_follows_the_schedule():
    scale = LogitScale(initial_value=1.7)
    scale.build((None, 3))
    loss = linf.ClippedHingeCrossEntropy(eps=0.4, ce_weight_start=0.05, ce_weight_end=2e-4, logit_scale=scale)
    hinge = np.clip(numpy_margins(LOGITS, LABELS, 0.4).max(axis=1) / 0.8, 0, 1)
    for ratio in (0.0, 0.3, 1.0):
        loss.set_progress(ratio)
        weight = 0.05 * (2e-4 / 0.05) ** ratio
        assert float(ops.convert_to_numpy(loss.ce_weight)) == pytest.approx(weight, rel=1e-6)
        expected = np.mean(hinge + weight * numpy_cross_entropy(1.7 * LOGITS, LABELS))
        assert float(loss(LABELS, LOGITS)) == pytest.approx(expected, rel=1e-5)
    # Misclassified points saturate the hinge at 1 (sample 1 here): only the CE term moves them.
    assert hinge[1] == 1.0
    with pytest.raises(ValueError, match="eps"):
        linf.ClippedHingeCrossEntropy(eps=0.0)
    with pytest.raises(TypeError, match="logit_scale"):
        linf.ClippedHingeCrossEntropy(eps=0.1, logit_scale=keras.layers.Dense(1))


def test_v2_training_learns_the_logit_scale_without_changing_the_logits():
    model = zoo.linf_dist_net(depth=2, width=8, input_shape=(6,), num_classes=3, p=8.0, logit_scale=True)
    scale = model.get_layer("logit_scale")
    x = np.random.default_rng(1).normal(size=(32, 6)).astype("float32")
    loss = linf.ClippedHingeCrossEntropy(0.1, ce_weight_start=1.0, logit_scale=scale)
    model.compile(keras.optimizers.Adam(0.05), loss=loss)
    before = float(ops.convert_to_numpy(scale.scale))
    model.fit(x, np.arange(32) % 3, epochs=3, batch_size=8, verbose=0)
    assert float(ops.convert_to_numpy(scale.scale)) != pytest.approx(before)
    without_scale = keras.Sequential(model.layers[:-1])
    np.testing.assert_array_equal(model.predict(x, verbose=0), without_scale.predict(x, verbose=0))


def numpy_head_margins(features, labels, eps, hidden, logits):
    """Interval arithmetic through Dense -> tanh -> Dense, last layer elided, in float64."""
    w1, b1 = (ops.convert_to_numpy(v).astype(np.float64) for v in (hidden.kernel, hidden.bias))
    w2, b2 = (ops.convert_to_numpy(v).astype(np.float64) for v in (logits.kernel, logits.bias))
    centre = features.astype(np.float64) @ w1 + b1
    radius = np.full_like(features, eps, dtype=np.float64) @ np.abs(w1)
    low, high = np.tanh(centre - radius), np.tanh(centre + radius)
    centre, radius = (high + low) / 2, (high - low) / 2
    margins = np.zeros((len(features), w2.shape[1]))
    for n, t in enumerate(labels):
        difference = w2 - w2[:, t : t + 1]
        margins[n] = centre[n] @ difference + radius[n] @ np.abs(difference) + b2 - b2[t]
    return margins


def _hybrid(depth=2, width=12, hidden=6, inputs=8, classes=3, p=math.inf, identity_value=10.0):
    model = zoo.linf_dist_net_mlp(
        depth, width, hidden, input_shape=(inputs,), num_classes=classes, p=p, identity_value=identity_value
    )
    for layer in zoo.hybrid_head(model):  # non-zero biases, so that their elision is exercised
        layer.bias.assign(np.random.default_rng(2).normal(size=layer.bias.shape).astype("float32"))
    return model


def test_hybrid_loss_matches_numpy_interval_arithmetic():
    model = _hybrid()
    hidden, logits = zoo.hybrid_head(model)
    features = np.random.default_rng(3).normal(size=(5, 12)).astype("float32")
    labels = np.array([0, 1, 2, 1, 0])
    margins = numpy_head_margins(features, labels, 0.2, hidden, logits)
    outputs = ops.convert_to_numpy(logits(hidden(features))).astype(np.float64)
    expected = np.mean(0.3 * numpy_cross_entropy(margins, labels) + 0.7 * numpy_cross_entropy(outputs, labels))
    loss = linf.HybridIntervalCrossEntropy(zoo.hybrid_head(model), eps=0.2, kappa=0.3)
    assert float(loss(labels, features)) == pytest.approx(expected, rel=1e-5)
    with pytest.raises(ValueError, match="Dense"):
        linf.HybridIntervalCrossEntropy([keras.layers.Activation("tanh")], eps=0.1)


def test_hybrid_training_model_trains_head_and_features():
    model = _hybrid(p=8.0)
    train_model = zoo.hybrid_training_model(model)
    loss = linf.HybridIntervalCrossEntropy(zoo.hybrid_head(model), eps=0.1)
    train_model.compile(keras.optimizers.Adam(0.01), loss={"features": loss, "logits": None})
    x = np.random.default_rng(4).normal(size=(64, 8)).astype("float32")
    y = (x[:, 0] > 0).astype("int64") + (x[:, 1] > 0)
    before = [ops.convert_to_numpy(w).copy() for w in model.trainable_weights]
    history = train_model.fit(x, {"features": y, "logits": y}, epochs=8, batch_size=16, verbose=0)
    assert history.history["loss"][-1] < history.history["loss"][0]
    after = [ops.convert_to_numpy(w) for w in model.trainable_weights]
    assert all(np.any(a != b) for a, b in zip(after, before))


# ---------------------------------------------------------------- interval bounds


def _model(name):
    """A small model of each kind with non-zero running means, and its input shape."""
    if name == "hybrid":
        # Identity value 1, not 10: features near 20 saturate the tanh head (torch's draws), a zero-width box.
        return _hybrid(identity_value=1.0), (8,)
    if name == "net":
        model, shape = zoo.linf_dist_net(3, 16, (4, 4, 1), num_classes=3, mean=0.5, std=0.3, p=math.inf), (4, 4, 1)
    else:
        shape = (5, 5, 2)
        model = keras.Sequential(
            [
                keras.Input(shape),
                LInfDistConv2D(4, 3, padding="same", p=math.inf),
                keras.layers.Flatten(),
                LInfDistDense(3, mean_shift=False, negate=True, p=math.inf),
            ]
        )
    model(np.random.default_rng(5).uniform(size=(32,) + shape).astype("float32"), training=True)
    return model, shape


@pytest.mark.parametrize("name", ["net", "conv", "hybrid"])
@pytest.mark.parametrize("p", [8.0, math.inf])
def test_interval_bounds_contain_outputs_of_points_in_the_box(name, p):
    model, shape = _model(name)
    linf.set_p(model, p)
    rng = np.random.default_rng(6)
    x = rng.uniform(size=(4,) + shape).astype("float32")
    lower, upper = (ops.convert_to_numpy(b) for b in linf.interval_bounds(model, x - 0.1, x + 0.1))
    # 50 random points of each box, and its corners' signs pattern x +- 0.1.
    points = np.repeat(x, 50, axis=0) + rng.uniform(-0.1, 0.1, size=(200,) + shape).astype("float32")
    points[::50] = x + 0.1 * np.sign(rng.normal(size=x.shape)).astype("float32")
    outputs = ops.convert_to_numpy(model(points, training=False)).reshape(4, 50, -1)
    assert np.all(outputs >= lower[:, None] - 1e-4) and np.all(outputs <= upper[:, None] + 1e-4)
    assert np.all(upper - lower > 0)


@pytest.mark.parametrize("name", ["net", "conv", "hybrid"])
def test_ibp_margins_at_eps_zero_are_the_exact_logit_differences(name):
    model, shape = _model(name)
    x = np.random.default_rng(7).uniform(size=(6,) + shape).astype("float32")
    labels = np.arange(6) % 3
    logits = model.predict(x, verbose=0)
    expected = logits - logits[np.arange(6), labels][:, None]
    np.testing.assert_allclose(linf.ibp_margins(model, x, labels, 0.0), expected, atol=1e-4)


def test_elision_is_at_least_as_tight_as_plain_intervals():
    model = _hybrid()
    x = np.random.default_rng(8).uniform(size=(20, 8)).astype("float32")
    labels = np.arange(20) % 3
    # The bound's arithmetic, without the rounding slack that ibp_margins adds (tested in test_audit_ibp_attacks).
    is_target = np.eye(3, dtype=bool)[labels]
    elided = ops.convert_to_numpy(elided_margins(chain_layers(model), x - 0.05, x + 0.05, is_target))
    lower, upper = (ops.convert_to_numpy(b) for b in linf.interval_bounds(model, x - 0.05, x + 0.05))
    plain = upper - lower[np.arange(20), labels][:, None]
    plain[np.arange(20), labels] = 0.0
    assert np.all(elided <= plain + 1e-5)


def test_interval_bounds_refuse_unknown_layers():
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3, activation="gelu")])
    with pytest.raises(TypeError, match="non-decreasing"):
        linf.interval_bounds(model, np.zeros((1, 4)), np.ones((1, 4)))
    model = keras.Sequential([keras.Input((4,)), keras.layers.BatchNormalization()])
    with pytest.raises(TypeError, match="BatchNormalization"):
        linf.interval_bounds(model, np.zeros((1, 4)), np.ones((1, 4)))


# ---------------------------------------------------------------- certification


def test_lipschitz_bound_of_the_zoo_models():
    net, _ = _model("net")
    assert linf.linf_lipschitz_bound(net) == pytest.approx(1 / 0.3)
    hybrid = _hybrid()
    hidden, logits = zoo.hybrid_head(hybrid)
    expected = np.prod([np.abs(ops.convert_to_numpy(layer.kernel)).sum(axis=0).max() for layer in (hidden, logits)])
    assert linf.linf_lipschitz_bound(hybrid) == pytest.approx(expected, rel=1e-6)
    linf.set_p(net, 8.0)
    with pytest.raises(ValueError, match="p = inf"):
        linf.linf_lipschitz_bound(net)


@pytest.fixture(scope="module")
def trained_net():
    """A small l_inf-dist Net trained on three well-separated classes of 12-pixel images in [0, 1]."""
    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(9)
    centres = np.array([[0.2] * 12, [0.8] * 12, [0.2] * 6 + [0.8] * 6])
    labels = rng.integers(0, 3, size=600)
    x = np.clip(centres[labels] + rng.uniform(-0.25, 0.25, size=(600, 12)), 0, 1).astype("float32")
    model = zoo.linf_dist_net(depth=3, width=24, input_shape=(12,), num_classes=3, mean=0.5, std=0.5, p=8.0)
    model.compile(keras.optimizers.Adam(0.02), loss=linf.LInfDistHinge(eps=0.3 / 0.5))
    scheduler = linf.LpScheduler(8.0, 1000.0, constant_epochs=2, growth_epochs=4)
    model.fit(x[:500], labels[:500], epochs=8, batch_size=50, callbacks=[scheduler], verbose=0)
    linf.set_p(model, math.inf)
    return model, x[500:], labels[500:]


def test_certificates_lipschitz_implies_ibp_and_eps_zero_counts_correct_points(trained_net):
    model, x, labels = trained_net
    correct = np.argmax(model.predict(x, verbose=0), axis=1) == labels
    assert correct.mean() > 0.9
    np.testing.assert_array_equal(linf.certify_ibp(model, x, labels, 0.0), correct)
    np.testing.assert_array_equal(linf.certify_lipschitz(model, x, labels, 0.0), correct)
    for eps in (0.05, 0.1, 0.2):
        by_lipschitz = linf.certify_lipschitz(model, x, labels, eps)
        by_ibp = linf.certify_ibp(model, x, labels, eps)
        assert np.all(by_ibp[by_lipschitz])
    assert linf.certify_ibp(model, x, labels, 0.1).mean() > 0.5


def test_pgd_never_breaks_a_certified_point(trained_net):
    model, x, labels = trained_net
    eps = 0.1
    certified = linf.certify_ibp(model, x, labels, eps)
    assert certified.sum() > 20
    adversarial = pgd(
        model, x[certified], labels[certified], eps, norm="linf", steps=100, loss="cw", restarts=2, seed=0
    )
    assert np.max(np.abs(adversarial - x[certified])) <= eps + 1e-6
    assert np.all(np.argmax(model.predict(adversarial, verbose=0), axis=1) == labels[certified])
    # The attack works: it breaks some points that are not certified at a large radius.
    large = pgd(model, x, labels, 0.4, norm="linf", steps=50, loss="cw", seed=0)
    assert np.mean(np.argmax(model.predict(large, verbose=0), axis=1) != labels) > 0.2


def test_evaluate_reports_consistent_accuracies(trained_net):
    model, x, labels = trained_net
    scores = linf.evaluate_linf_robustness(model, x, labels, 0.1, pgd_steps=20)
    assert 0 <= scores["certified_lipschitz"] <= scores["certified"] <= scores["pgd"] <= scores["clean"] <= 1
    assert scores["clean"] > 0.9
