"""Attacks: exact behaviour on linear models, constraints, restarts, and certificates that survive PGD."""

import os
import pathlib
import time

import keras
import numpy as np
import pytest
from conftest import data_available

from deel_lip_ext import attacks


def linear_model(weights, bias):
    weights = np.asarray(weights, "float32")
    model = keras.Sequential([keras.Input((weights.shape[0],)), keras.layers.Dense(weights.shape[1])])
    model.layers[0].set_weights([weights, np.asarray(bias, "float32")])
    return model


def mlp(inputs=6, outputs=3, seed=0):
    keras.utils.set_random_seed(seed)
    return keras.Sequential(
        [keras.Input((inputs,)), keras.layers.Dense(32, activation="relu"), keras.layers.Dense(outputs)]
    )


def margin_loss(model, x, labels):
    """max_{j != y} f_j - f_y (binary: -s f), in numpy."""
    f = keras.ops.convert_to_numpy(model(x, training=False)).astype("float64")
    if f.shape[1] == 1:
        return -np.where(np.asarray(labels).reshape(-1) > 0, 1.0, -1.0) * f[:, 0]
    return np.array([np.max(np.delete(row, t)) - row[t] for row, t in zip(f, labels)])


@pytest.fixture
def binary_linear():
    rng = np.random.default_rng(0)
    w = rng.normal(size=(8, 1))
    model = linear_model(w, [0.3])
    x = rng.normal(size=(64, 8)).astype("float32")
    labels = (keras.ops.convert_to_numpy(model(x))[:, 0] > 0).astype("int64")  # every point correctly classified
    return model, w[:, 0], x, labels


@pytest.mark.parametrize("norm", ["l2", "linf"])
def test_pgd_on_a_linear_model_breaks_exactly_the_points_closer_than_eps(binary_linear, norm):
    model, w, x, labels = binary_linear
    dual_norm = np.linalg.norm(w) if norm == "l2" else np.sum(np.abs(w))
    distance = np.abs(keras.ops.convert_to_numpy(model(x))[:, 0]) / dual_norm  # exact distance to the decision boundary
    eps = float(np.median(distance))
    away = np.abs(distance - eps) > 1e-3 * eps
    x_adv = attacks.pgd(model, x, labels, eps, norm=norm, steps=30, loss="cw", clip_min=None, clip_max=None, seed=0)
    broken = margin_loss(model, x_adv, labels) > 0
    np.testing.assert_array_equal(broken[away], (distance < eps)[away])


def test_fgsm_linf_on_a_linear_model_is_the_sign_step(binary_linear):
    model, w, x, labels = binary_linear
    sign = np.where(labels > 0, 1.0, -1.0)[:, None]
    x_adv = attacks.fgsm(model, x, labels, 0.1, norm="linf", clip_min=None, clip_max=None)
    np.testing.assert_allclose(x_adv, x - 0.1 * sign * np.sign(w)[None, :], atol=1e-6)
    x_adv2 = attacks.fgsm(model, x, labels, 0.1, norm="l2", clip_min=None, clip_max=None)
    np.testing.assert_allclose(x_adv2, x - 0.1 * sign * (w / np.linalg.norm(w))[None, :], atol=1e-6)


@pytest.mark.parametrize("norm", ["l2", "linf"])
@pytest.mark.parametrize("loss", ["ce", "cw"])
def test_pgd_stays_in_the_ball_and_the_box(norm, loss):
    model = mlp()
    rng = np.random.default_rng(1)
    x = rng.uniform(size=(40, 6)).astype("float32")
    labels = rng.integers(0, 3, 40)
    eps = 0.3
    x_adv = attacks.pgd(model, x, labels, eps, norm=norm, steps=15, loss=loss, batch_size=16, seed=1)
    delta = (x_adv - x).reshape(len(x), -1)
    size = np.linalg.norm(delta, axis=1) if norm == "l2" else np.max(np.abs(delta), axis=1)
    assert np.all(size <= eps * (1 + 1e-5))
    assert x_adv.min() >= 0.0 and x_adv.max() <= 1.0
    assert np.all(margin_loss(model, x_adv, labels) >= margin_loss(model, x, labels) - 1e-6)


def test_pgd_restarts_keep_the_best_point():
    model = mlp(seed=2)
    rng = np.random.default_rng(2)
    x = rng.uniform(size=(30, 6)).astype("float32")
    labels = rng.integers(0, 3, 30)
    one = attacks.pgd(model, x, labels, 0.5, steps=5, restarts=1, seed=7)
    three = attacks.pgd(model, x, labels, 0.5, steps=5, restarts=3, seed=7)
    assert np.all(margin_loss(model, three, labels) >= margin_loss(model, one, labels) - 1e-6)
    assert np.any(margin_loss(model, three, labels) > margin_loss(model, one, labels))


def test_binary_label_conventions_are_equivalent(binary_linear):
    model, _, x, labels = binary_linear
    kwargs = dict(eps=0.2, steps=5, seed=3, clip_min=None, clip_max=None)
    for loss in ("ce", "cw"):
        a = attacks.pgd(model, x, labels, loss=loss, **kwargs)
        b = attacks.pgd(model, x, 2 * labels - 1, loss=loss, **kwargs)
        c = attacks.pgd(model, x, labels[:, None], loss=loss, **kwargs)
        np.testing.assert_array_equal(a, b)
        np.testing.assert_array_equal(a, c)


def test_zero_eps_returns_the_inputs():
    model = mlp()
    x = np.random.default_rng(4).uniform(size=(5, 6)).astype("float32")
    np.testing.assert_array_equal(attacks.pgd(model, x, np.zeros(5, int), 0.0), x)
    np.testing.assert_array_equal(attacks.fgsm(model, x, np.zeros(5, int), 0.0), x)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(eps=-0.1), "eps"),
        (dict(norm="l1"), "norm"),
        (dict(loss="mse"), "loss"),
        (dict(steps=0), "steps"),
        (dict(step_size=0.0), "step_size"),
        (dict(clip_min=1.0, clip_max=0.0), "clip_min"),
        (dict(y=np.zeros((5, 2))), "labels"),
        (dict(y=np.zeros(4, int)), "y must hold"),
        (dict(y=np.full(5, 3)), "class indices"),
    ],
)
def test_bad_arguments_raise(kwargs, match):
    model = mlp()
    x = np.zeros((5, 6), "float32")
    arguments = dict(model=model, x=x, y=np.zeros(5, int), eps=0.1)
    arguments.update(kwargs)
    with pytest.raises(ValueError, match=match):
        attacks.pgd(**arguments)


def test_verify_certificates_on_a_linear_model_is_exact(binary_linear):
    """A linear binary certificate is tight and PGD is exact: certified == empirically robust."""
    model, w, x, labels = binary_linear
    lip = float(np.linalg.norm(w))
    distance = np.abs(keras.ops.convert_to_numpy(model(x))[:, 0]) / lip
    eps = float(np.quantile(distance, 0.4))
    result = attacks.verify_certificates(
        model, x, labels, eps, lip_const=lip, steps=20, restarts=1, clip_min=None, clip_max=None
    )
    assert result.n_broken == 0 and result.n_certified == np.sum(distance > eps)
    assert result.empirical_robust_accuracy == pytest.approx(result.certified_accuracy)
    assert result.clean_accuracy == 1.0


def test_verify_certificates_catches_a_wrong_lipschitz_constant():
    rng = np.random.default_rng(5)
    w = rng.normal(size=(6, 4))
    model = linear_model(w, np.zeros(4))
    x = rng.uniform(size=(60, 6)).astype("float32")
    labels = np.argmax(keras.ops.convert_to_numpy(model(x)), axis=1)
    true_lip = float(np.linalg.norm(w, 2))
    honest = attacks.verify_certificates(
        model, x, labels, 0.2, lip_const=true_lip, steps=30, clip_min=None, clip_max=None
    )
    assert honest.n_broken == 0 and honest.n_certified > 0
    false = attacks.verify_certificates(
        model, x, labels, 0.2, lip_const=true_lip / 10, steps=30, clip_min=None, clip_max=None
    )
    assert false.n_certified > honest.n_certified and false.n_broken > 0
    # Every broken point really has an adversarial inside the ball (exact distance for a linear model).
    f = keras.ops.convert_to_numpy(model(x)).astype("float64")
    distance = [
        min((f[i, t] - f[i, j]) / np.linalg.norm(w[:, t] - w[:, j]) for j in range(4) if j != t)
        for i, t in enumerate(labels)
    ]
    assert all(distance[i] < 0.2 for i in false.broken_indices)
    assert "certificates broken" in str(false)


# ------------------------------------------------------------------ MNIST: certificates survive PGD


def _load_mnist(num_train, num_test):
    try:
        from deel_lip_ext.datasets import load_numpy
    except ImportError:
        load_numpy = None
    if load_numpy is not None:
        x_train, y_train, x_test, y_test = load_numpy("mnist", num_train=num_train, num_test=num_test)
    else:
        with np.load(pathlib.Path(os.environ["DEEL_LIP_EXT_DATA"]) / "mnist.npz") as data:
            x_train, y_train = data["x_train"][:num_train], data["y_train"][:num_train]
            x_test, y_test = data["x_test"][:num_test], data["y_test"][:num_test]
        x_train, x_test = (x.astype("float32")[..., None] / 255.0 for x in (x_train, x_test))
    flat = lambda x: x.reshape(len(x), -1)  # noqa: E731
    return flat(x_train), y_train.astype("int64"), flat(x_test), y_test.astype("int64")


def _train(model, loss, x, y, steps, batch_size=128):
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss=loss)
    dataset = np.eye(10, dtype="float32")[y]
    epochs = max(1, steps * batch_size // len(x))
    model.fit(x, dataset, batch_size=batch_size, epochs=epochs, verbose=0)
    return model


@pytest.mark.skipif(not data_available("mnist"), reason="offline MNIST (mnist.npz) not available")
def test_mnist_certificates_survive_pgd_and_pgd_breaks_an_unconstrained_model():
    from deel_lip_ext.layers import GroupSort2, SpectralDense
    from deel_lip_ext.losses import MulticlassHKR

    start = time.perf_counter()
    x_train, y_train, x_test, y_test = _load_mnist(4000, 200)
    lipschitz = keras.Sequential(
        [
            keras.Input((784,)),
            SpectralDense(128),
            GroupSort2(),
            SpectralDense(64),
            GroupSort2(),
            SpectralDense(10),
        ]
    )
    _train(lipschitz, MulticlassHKR(alpha=50.0, min_margin=1.5), x_train, y_train, steps=300)
    for eps in (0.5, 1.0, 1.58):
        result = attacks.verify_certificates(
            lipschitz, x_test, y_test, eps, steps=100, restarts=2, step_sizes=(0.25 * eps, 0.05 * eps, 0.01 * eps)
        )
        assert result.n_broken == 0, str(result)
        assert result.certified_accuracy <= result.empirical_robust_accuracy <= result.clean_accuracy
        if eps < 1.58:
            assert result.n_certified > 0, str(result)
    assert result.clean_accuracy > 0.7

    plain = keras.Sequential([keras.Input((784,)), keras.layers.Dense(128, activation="relu"), keras.layers.Dense(10)])
    _train(plain, keras.losses.CategoricalCrossentropy(from_logits=True), x_train, y_train, steps=300)
    x_adv = attacks.pgd(plain, x_test, y_test, 1.58, steps=100, loss="cw", restarts=1)
    clean = np.mean(np.argmax(keras.ops.convert_to_numpy(plain(x_test)), 1) == y_test)
    robust = np.mean(np.argmax(keras.ops.convert_to_numpy(plain(x_adv)), 1) == y_test)
    assert clean > 0.8 and robust < 0.5 * clean, (clean, robust)
    print(f"MNIST certificates check took {time.perf_counter() - start:.1f} s")
