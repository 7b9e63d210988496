"""SoftHKR, LseHKR (deel-torchlip's formulas) and EMMA against numpy references; configs and round trips."""

import math

import keras
import numpy as np
import pytest

from deel_lip_ext import callbacks, losses


def logsumexp(values):
    """log(sum(exp(values))) in float64, shifted by the max (numpy only: the test extra has no scipy)."""
    values = np.asarray(values, np.float64)
    top = np.max(values)
    return float(top + np.log(np.sum(np.exp(values - top))))


def _one_hot(labels, classes):
    return np.eye(classes, dtype="float32")[labels]


def _data(n=7, classes=4, seed=0, scale=2.0):
    rng = np.random.default_rng(seed)
    return _one_hot(rng.integers(classes, size=n), classes), (scale * rng.normal(size=(n, classes))).astype("float32")


# ------------------------------------------------------------ numpy references of deel-torchlip's modules/loss.py


def np_torchlip_soft_hkr(y, f, alpha, min_margin, alpha_mean, temperature, current_mean):
    """SoftHKRMulticlassLoss.forward per sample, and the new running mean (torchlip's steps, in float64)."""
    mean = alpha_mean * current_mean + (1 - alpha_mean) * np.mean(np.abs(f))
    new_mean = np.clip(mean, 0.005, 1000)
    total = np.clip(mean, min_margin, 20000)
    t = np.clip(temperature * min_margin / total, 0.005, 250)
    out = []
    for yr, fr in zip(y, f):
        others = np.where(yr > 0, -np.inf, t * fr)
        soft = np.exp(others - others.max())
        soft = soft / soft.sum()
        weights = np.where(yr > 0, 1.0, soft)
        signed = fr * np.where(yr > 0, 1.0, -1.0)
        kr = np.sum(-signed * weights)
        hinge = np.sum(np.maximum(min_margin / 2 - signed, 0) * weights)
        out.append((1 - alpha) * kr + alpha * hinge)
    return np.array(out), new_mean


def np_torchlip_lse_hkr(y, f, alpha, temperature, penalty, min_margin):
    """LseHKRMulticlassLoss.forward per sample."""
    g = f.astype(np.float64) * temperature
    out = []
    for yr, gr in zip(y, g):
        pos = gr[yr > 0][0]
        neg = gr[yr <= 0]
        t = math.log(len(gr) - 1) / (min_margin * penalty / 2)
        lse = logsumexp(t * neg) / t if len(gr) > 2 else neg[0]
        hinge = max(min_margin / 2 - pos, 0) + max(min_margin / 2 + lse, 0)
        out.append((1 - alpha) * -(pos - lse) + alpha * hinge)
    return np.array(out)


def np_emma_logits(y, f, epsilon, pair):
    """BRONet/LiResNet reference (margin_layer.py emma_loss): z = f - f_y + clip(-(f - f_y) / (eps K), .01, 1) eps K."""
    out = []
    for yr, fr in zip(y, f):
        t = int(np.argmax(yr))
        relative = fr.astype(np.float64) - fr[t]
        margin = epsilon * pair[t] * (np.arange(len(fr)) != t)
        out.append(relative + np.clip(-relative / np.maximum(margin, 1e-8), 0.01, 1.0) * margin)
    return np.array(out)


def np_emma(y, f, epsilon, pair):
    z = np_emma_logits(y, f, epsilon, pair)
    return np.array([logsumexp(zr) - zr[int(np.argmax(yr))] for yr, zr in zip(y, z)])


def np_logit_annealing(y, f, epsilon, pair, gamma, offset, temperature):
    out = []
    for yr, zr in zip(y, np_emma_logits(y, f, epsilon, pair)):
        t = int(np.argmax(yr))
        o = (zr - offset * yr) / temperature
        ce = logsumexp(o) - o[t]
        out.append(temperature * (1 - np.exp(-ce)) ** gamma * ce)
    return np.array(out)


# ------------------------------------------------------------ tests


@pytest.mark.parametrize("alpha", [0.0, 0.3, 1.0])
def test_soft_hkr_matches_torchlip_over_several_batches(alpha):
    loss = losses.SoftHKR(alpha=alpha, min_margin=0.7, alpha_mean=0.9, temperature=2.0, reduction=None)
    current = 0.7
    for seed in range(3):
        y, f = _data(seed=seed, classes=5)
        expected, current = np_torchlip_soft_hkr(y, f, alpha, 0.7, 0.9, 2.0, current)
        np.testing.assert_allclose(keras.ops.convert_to_numpy(loss(y, f)), expected, rtol=1e-5, atol=1e-5)
        assert float(keras.ops.convert_to_numpy(loss.current_mean)) == pytest.approx(current, rel=1e-6)


@pytest.mark.parametrize("classes", [2, 3, 10])
@pytest.mark.parametrize(
    "alpha,temperature,penalty,margin", [(1.0, 1.0, 1.0, 1.0), (0.0, 2.0, 0.5, 0.5), (0.4, 3.0, 2.0, 1.5)]
)
def test_lse_hkr_matches_torchlip(classes, alpha, temperature, penalty, margin):
    y, f = _data(classes=classes, seed=classes)
    loss = losses.LseHKR(alpha=alpha, temperature=temperature, penalty=penalty, min_margin=margin, reduction=None)
    expected = np_torchlip_lse_hkr(y, f, alpha, temperature, penalty, margin)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(loss(y, f)), expected, rtol=1e-5, atol=1e-5)


def test_lse_is_between_the_max_and_the_max_plus_the_slack():
    y, f = _data(classes=6, seed=3, scale=5.0)
    loss = losses.LseHKR(alpha=0.0, penalty=1.0, min_margin=1.0, reduction=None)  # loss = lse - f_y
    lse = keras.ops.convert_to_numpy(loss(y, f)) + (f * y).sum(axis=1)
    top_other = np.where(y > 0, -np.inf, f).max(axis=1)
    assert np.all(lse >= top_other - 1e-5) and np.all(lse <= top_other + 0.5 + 1e-5)


def test_emma_with_a_global_constant_and_with_pairwise_constants():
    y, f = _data(classes=4, seed=4)
    loss = losses.EMMA(epsilon=0.5, lipschitz=1.3, reduction=None)
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(loss(y, f)), np_emma(y, f, 0.5, np.full((4, 4), 1.3)), rtol=1e-5, atol=1e-6
    )
    kernel = np.random.default_rng(5).normal(size=(6, 4)).astype("float32")
    pair = np.array([[2.0 * np.linalg.norm(kernel[:, i] - kernel[:, j]) for j in range(4)] for i in range(4)])
    got = keras.ops.convert_to_numpy(losses.dense_pairwise_lipschitz(kernel, 2.0))
    np.testing.assert_allclose(got, pair, atol=1e-5)
    pairwise = losses.EMMA(0.25, lipschitz=lambda: losses.dense_pairwise_lipschitz(kernel, 2.0), reduction=None)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(pairwise(y, f)), np_emma(y, f, 0.25, pair), rtol=1e-5)
    with pytest.raises(ValueError, match=r"saved with `lipschitz`.*compile=False"):
        losses.EMMA.from_config(pairwise.get_config())
    # The per-class radius: a logit far below the target (pair certified beyond epsilon) gets the full shift
    # epsilon K, one above it (pair not certified) 1% of it.
    y2 = np.array([[1.0, 0.0, 0.0]], "float32")
    f2 = np.array([[0.0, -10.0, 1.0]], "float32")
    z = losses.EMMA(1.0, lipschitz=2.0).shifted_logits(keras.ops.convert_to_tensor(y2), keras.ops.convert_to_tensor(f2))
    np.testing.assert_allclose(keras.ops.convert_to_numpy(z), [[0.0, -10.0 + 2.0, 1.0 + 0.02]], atol=1e-6)
    # epsilon = 0 is the cross-entropy
    ce = keras.losses.CategoricalCrossentropy(from_logits=True, reduction=None)(y, f)
    np.testing.assert_allclose(losses.EMMA(0.0, reduction=None)(y, f), ce, rtol=1e-5)


@pytest.mark.parametrize(
    "loss",
    [
        losses.SoftHKR(alpha=0.8, min_margin=0.5, alpha_mean=0.95, temperature=3.0),
        losses.LseHKR(alpha=0.6, temperature=2.0, penalty=0.5, min_margin=0.8),
        losses.EMMA(epsilon=0.1, lipschitz=2.0),
        losses.LogitAnnealing(epsilon=0.2, lipschitz=1.5, gamma=3.0, offset=1.0, temperature=0.5),
    ],
    ids=lambda loss: type(loss).__name__,
)
def test_config_keras_round_trip_and_label_checks(loss, tmp_path):
    clone = type(loss).from_config(loss.get_config())
    assert clone.get_config() == loss.get_config()
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(4)])
    model.compile(optimizer="sgd", loss=loss)
    y, _ = _data(n=8, classes=4)
    x = np.random.default_rng(0).normal(size=(8, 3)).astype("float32")
    model.fit(x, y, epochs=1, verbose=0)
    path = tmp_path / "model.keras"
    model.save(path)
    loaded = keras.saving.load_model(path)
    assert type(loaded.loss) is type(loss) and loaded.loss.get_config()["name"] == loss.get_config()["name"]
    with pytest.raises(ValueError, match="class indices|one-hot"):
        loss(np.array([0, 1, 2], "float32"), np.zeros((3, 4), "float32"))


@pytest.mark.parametrize("gamma,offset,temperature", [(5.0, 2.0, 0.75), (0.0, 0.0, 1.0), (2.0, 1.0, 0.3)])
def test_logit_annealing_matches_the_reference(gamma, offset, temperature):
    y, f = _data(classes=5, seed=6)
    pair = np.abs(np.random.default_rng(6).normal(size=(5, 5))) + 0.5
    loss = losses.LogitAnnealing(0.3, lipschitz=lambda: pair, gamma=gamma, offset=offset, temperature=temperature)
    loss.reduction = None
    expected = np_logit_annealing(y, f, 0.3, pair, gamma, offset, temperature)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(loss(y, f)), expected, rtol=1e-5, atol=1e-6)
    if gamma == 0.0 and offset == 0.0 and temperature == 1.0:  # then it is EMMA
        np.testing.assert_allclose(expected, np_emma(y, f, 0.3, pair), rtol=1e-12)


def test_emma_epsilon_is_schedulable():
    """A frozen model outputs 0: EMMA = log(1 + (C - 1) exp(0.01 eps K)) (radius clipped at 0.01), scheduled eps."""
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(4, kernel_initializer="zeros", trainable=False)])
    model.compile(optimizer="sgd", loss=losses.EMMA(epsilon=0.0, lipschitz=2.0))
    scheduler = callbacks.LossParamScheduler("epsilon", fp=[0.0, 1.0], xp=[0, 2])
    y = _one_hot(np.arange(8) % 4, 4)
    history = model.fit(np.ones((8, 3), "float32"), y, batch_size=8, epochs=3, callbacks=[scheduler], verbose=0)
    expected = [math.log(1 + 3 * math.exp(0.01 * eps * 2.0)) for eps in (0.0, 0.5, 1.0)]
    np.testing.assert_allclose(history.history["loss"], expected, rtol=1e-5)
    assert model.loss.get_config()["epsilon"] == 1.0


def test_parameters_are_checked():
    for make, match in [
        (lambda: losses.SoftHKR(alpha=1.5), "alpha"),
        (lambda: losses.LseHKR(penalty=0.0), "penalty"),
        (lambda: losses.LseHKR(temperature=-1.0), "temperature"),
        (lambda: losses.EMMA(epsilon=-0.1), "epsilon"),
        (lambda: losses.EMMA(0.1, lipschitz=0.0), "lipschitz"),
        (lambda: losses.LogitAnnealing(0.1, temperature=0.0), "temperature"),
        (lambda: losses.LogitAnnealing(0.1, gamma=-1.0), "gamma"),
    ]:
        with pytest.raises(ValueError, match=match):
            make()
