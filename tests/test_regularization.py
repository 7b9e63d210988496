"""deel_lip_ext.regularization: tulip / adversarial training objectives and measurements.

References are independent of the code under test: central finite differences of the
model in float64 (input gradients, the penalty's parameter gradient), Taylor orders
(surrogates), exact geometry of linear classifiers (adversarial distances) and numpy
Jacobians from the weights (Lipschitz estimate).
"""

import functools
import keras
import numpy as np
import pytest
from conftest import data_available

from _backend import to_numpy

from deel_lip_ext import _autodiff as autodiff
from deel_lip_ext import regularization as R

SPARSE_CE = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
ce_per_sample = functools.partial(R.per_sample_loss, SPARSE_CE)


def _mlp(activation, input_dim=5, hidden=4, classes=3, seed=0):
    # Seeded initializers: the same weights whatever ran before (on torch, Keras's unseeded
    # initializers draw from a generator that `set_random_seed` does not rewind).
    def dense(units, offset, **kwargs):
        return keras.layers.Dense(
            units,
            kernel_initializer=keras.initializers.GlorotUniform(seed=seed + offset),
            bias_initializer=keras.initializers.RandomNormal(stddev=0.05, seed=seed + offset + 1),
            **kwargs,
        )

    return keras.Sequential([keras.Input((input_dim,)), dense(hidden, 0, activation=activation), dense(classes, 2)])


def _batch(n=4, input_dim=5, classes=3, dtype="float64", seed=1):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, input_dim)).astype(dtype), rng.integers(0, classes, size=n)


def _losses(model, x, y):
    return to_numpy(ce_per_sample(y, model(x)))


def _relative_error(actual, expected):
    actual, expected = (np.asarray(to_numpy(values), np.float64) for values in (actual, expected))
    return np.linalg.norm(actual - expected) / np.linalg.norm(expected)


# ------------------------------------------------------------------ input gradients


def test_input_gradient_matches_central_differences(float64):
    model, (x, y) = _mlp("tanh"), _batch()
    losses, _, gradient = R.loss_input_gradient(model, ce_per_sample, x, y)
    step = 1e-6
    reference = np.zeros_like(x)
    for index in np.ndindex(x.shape):
        ahead, behind = x.copy(), x.copy()
        ahead[index] += step
        behind[index] -= step
        sample = index[0]
        reference[index] = (_losses(model, ahead, y)[sample] - _losses(model, behind, y)[sample]) / (2 * step)
    assert np.allclose(to_numpy(losses), _losses(model, x, y))
    assert _relative_error(gradient, reference) <= 1e-6


def test_per_sample_gradients_of_the_summed_loss_are_individual_gradients(float64):
    model, (x, y) = _mlp("tanh"), _batch()
    _, _, gradient = R.loss_input_gradient(model, ce_per_sample, x, y)
    for i in range(len(x)):
        _, _, alone = R.loss_input_gradient(model, ce_per_sample, x[i : i + 1], y[i : i + 1])
        np.testing.assert_allclose(to_numpy(gradient)[i], to_numpy(alone)[0], rtol=1e-12, atol=1e-14)


# ------------------------------------------------------------- double backprop penalty


def _penalty_gradient_and_finite_differences(model, x, y, lip_weight=0.7, step=1e-6, entries_per_variable=3):
    objective = R.Tulip(epsilon=0.0, lip_weight=lip_weight, penalty_scaling="sample")

    def penalty():
        return objective.forward(model, ce_per_sample, x, y)[1]

    variables = model.trainable_variables
    _, _, gradients = autodiff.parameter_gradients(lambda: (penalty(), None), variables)
    rng = np.random.default_rng(0)
    autodiff_values, reference = [], []
    for variable, gradient in zip(variables, gradients):
        original = to_numpy(variable)
        for flat_index in rng.choice(original.size, size=min(entries_per_variable, original.size), replace=False):
            index = np.unravel_index(flat_index, original.shape)
            values = []
            for sign in (1.0, -1.0):
                shifted = original.copy()
                shifted[index] += sign * step
                variable.assign(shifted)
                values.append(float(to_numpy(penalty())))
            variable.assign(original)
            reference.append((values[0] - values[1]) / (2 * step))
            autodiff_values.append(float(to_numpy(gradient)[index]))
    return np.array(autodiff_values), np.array(reference)


def test_penalty_parameter_gradient_matches_finite_differences_on_smooth_net(float64):
    model, (x, y) = _mlp("tanh"), _batch()
    autodiff_values, reference = _penalty_gradient_and_finite_differences(model, x, y)
    assert np.linalg.norm(reference) > 1e-3
    assert _relative_error(autodiff_values, reference) <= 1e-5


def test_penalty_parameter_gradient_is_nonzero_and_exact_for_relu_net(float64):
    # ReLU's second derivative is 0, yet the penalty depends on the weights through the
    # input gradient: a missing second-order path would give a zero gradient here.
    model, (x, y) = _mlp("relu", hidden=8), _batch()
    autodiff_values, reference = _penalty_gradient_and_finite_differences(model, x, y)
    assert np.linalg.norm(autodiff_values) > 1e-2
    assert _relative_error(autodiff_values, reference) <= 1e-5


@pytest.mark.parametrize("penalty_scaling, divide_by_batch", [("sample", False), ("batch_mean", True)])
def test_penalty_scaling(float64, penalty_scaling, divide_by_batch):
    model, (x, y) = _mlp("tanh"), _batch(n=5)
    lip_weight = 0.3
    norms = [
        np.linalg.norm(to_numpy(R.loss_input_gradient(model, ce_per_sample, x[i : i + 1], y[i : i + 1])[2]))
        for i in range(len(x))
    ]
    expected = lip_weight * max(norms) / (len(x) if divide_by_batch else 1)
    penalty = R.Tulip(epsilon=0.0, lip_weight=lip_weight, penalty_scaling=penalty_scaling).forward(
        model, ce_per_sample, x, y
    )[1]
    np.testing.assert_allclose(float(to_numpy(penalty)), expected, rtol=1e-12)


# ------------------------------------------------------------- first-order surrogates


@pytest.mark.parametrize("objective_class", [R.L2AdversarialTraining, R.FGSMTraining])
def test_one_step_surrogate_residual_is_second_order(float64, objective_class):
    """l(x') - l(x) - (first-order term) = O(eps^2): it shrinks 4x when eps halves."""
    model, (x, y) = _mlp("tanh"), _batch(n=3)
    _, _, gradient = R.loss_input_gradient(model, ce_per_sample, x, y)
    gradient = to_numpy(gradient)
    if objective_class is R.L2AdversarialTraining:
        first_order = np.linalg.norm(gradient, axis=1)
    else:  # the step is eps * sign(g) / sqrt(D): first-order gain eps * ||g||_1 / sqrt(D)
        first_order = np.abs(gradient).sum(axis=1) / np.sqrt(x.shape[1])
    residuals = []
    for epsilon in 1e-2 / 2.0 ** np.arange(7):
        perturbed = objective_class(epsilon=epsilon).perturb(model, ce_per_sample, x, y)
        np.testing.assert_allclose(np.linalg.norm(to_numpy(perturbed) - x, axis=1), epsilon, rtol=1e-12)
        residuals.append(_losses(model, to_numpy(perturbed), y) - _losses(model, x, y) - epsilon * first_order)
    ratios = np.array(residuals[:-1]) / np.array(residuals[1:])
    # ~4 throughout, and -> 4 as eps -> 0 (third-order terms fade).
    assert np.all((ratios > 3.0) & (ratios < 5.0)), ratios
    assert np.all(np.abs(ratios[-1] - 4.0) < 0.05), ratios


def test_finite_difference_directional_derivative_matches_gradient_norm():
    model, (x, y) = _mlp("tanh", input_dim=8, hidden=16), _batch(n=6, input_dim=8, dtype="float32")
    _, _, gradient = R.loss_input_gradient(model, ce_per_sample, x, y)
    gradient = to_numpy(gradient).astype(np.float64)
    for norm, exact in (("l2", np.linalg.norm(gradient, axis=1)), ("linf", np.abs(gradient).sum(axis=1))):
        errors = {}
        for order in (1, 2):
            _, _, derivatives = R.finite_difference_gradient_norms(
                model, ce_per_sample, x, y, step=1e-2, order=order, norm=norm
            )
            errors[order] = np.max(np.abs(to_numpy(derivatives) - exact) / exact)
        assert errors[1] <= 1e-2, (norm, errors)
        assert errors[2] <= 1e-2, (norm, errors)
    # The objective's penalty is lip_weight / 2 * mean(dl^2).
    _, _, derivatives = R.finite_difference_gradient_norms(model, ce_per_sample, x, y, step=1e-2)
    _, penalty = R.GradientNormPenalty(lip_weight=0.4, step=1e-2).forward(model, ce_per_sample, x, y)
    np.testing.assert_allclose(float(to_numpy(penalty)), 0.2 * np.mean(to_numpy(derivatives) ** 2), rtol=1e-5)


def test_finite_difference_error_shrinks_with_the_step(float64):
    model, (x, y) = _mlp("tanh"), _batch()
    exact = np.linalg.norm(to_numpy(R.loss_input_gradient(model, ce_per_sample, x, y)[2]), axis=1)
    errors = [
        np.max(np.abs(to_numpy(R.finite_difference_gradient_norms(model, ce_per_sample, x, y, step=h)[2]) - exact))
        for h in (1e-1, 1e-2, 1e-3)
    ]
    assert errors[0] > 5 * errors[1] > 25 * errors[2]


# ------------------------------------------------------------------------- PGD


@pytest.mark.parametrize("norm", ["l2", "linf"])
@pytest.mark.parametrize("random_start", [False, True])
def test_pgd_perturbation_stays_in_ball_and_box_and_raises_the_loss(norm, random_start):
    model = _mlp("relu", input_dim=12, hidden=16)
    rng = np.random.default_rng(0)
    x = rng.uniform(0.0, 1.0, size=(8, 12)).astype("float32")
    y = rng.integers(0, 3, size=8)
    epsilon = np.linspace(0.05, 0.4, 8).astype("float32")  # one radius per sample
    x_adv = to_numpy(
        R.pgd_perturbation(
            model,
            ce_per_sample,
            x,
            y,
            epsilon,
            norm=norm,
            steps=10,
            random_start=random_start,
            clip_min=0.0,
            clip_max=1.0,
            seed=3,
        )
    )
    sizes = np.linalg.norm(x_adv - x, axis=1) if norm == "l2" else np.abs(x_adv - x).max(axis=1)
    assert np.all(sizes <= epsilon * (1 + 1e-5))
    assert x_adv.min() >= 0.0 and x_adv.max() <= 1.0
    assert np.all(_losses(model, x_adv, y) > _losses(model, x, y))


# ---------------------------------------------------------------- training wiring


def _compile(trainer_or_model):
    trainer_or_model.compile(optimizer=keras.optimizers.SGD(0.1), loss=SPARSE_CE, metrics=["accuracy"])
    return trainer_or_model


def _toy_data(n=32, input_dim=6):
    rng = np.random.default_rng(0)
    x = rng.uniform(0.0, 1.0, size=(n, input_dim)).astype("float32")
    return x, (x[:, 0] > x[:, 1]).astype("int64") + (x[:, 2] > 0.5).astype("int64")


def _weights(model):
    return [np.asarray(w) for w in model.get_weights()]


def test_plain_objective_trains_exactly_like_keras():
    x, y = _toy_data()
    wrapped, plain = _mlp("relu", input_dim=6, hidden=8), _mlp("relu", input_dim=6, hidden=8)
    plain.set_weights(wrapped.get_weights())
    _compile(R.RobustTrainingModel(wrapped, "J0")).fit(x, y, batch_size=8, epochs=2, shuffle=False, verbose=0)
    _compile(plain).fit(x, y, batch_size=8, epochs=2, shuffle=False, verbose=0)
    for a, b in zip(_weights(wrapped), _weights(plain)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_one_step_objective_trains_on_the_detached_perturbed_batch():
    x, y = _toy_data()
    wrapped, plain = _mlp("tanh", input_dim=6, hidden=8), _mlp("tanh", input_dim=6, hidden=8)
    plain.set_weights(wrapped.get_weights())
    epsilon = 0.3
    _, _, gradient = R.loss_input_gradient(plain, ce_per_sample, x, y)
    gradient = to_numpy(gradient)
    x_perturbed = x + epsilon * gradient / np.linalg.norm(gradient, axis=1, keepdims=True)
    # One full-batch step each: training the wrapper on x == plain training on x'.
    _compile(R.RobustTrainingModel(wrapped, R.L2AdversarialTraining(epsilon))).fit(
        x, y, batch_size=len(x), epochs=1, verbose=0
    )
    _compile(plain).fit(x_perturbed, y, batch_size=len(x), epochs=1, verbose=0)
    for a, b in zip(_weights(wrapped), _weights(plain)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


OBJECTIVES = [
    R.PlainTraining(),
    R.FGSMTraining(epsilon=0.2, clip_min=0.0, clip_max=1.0),
    R.L2AdversarialTraining(epsilon=0.2),
    R.Tulip(epsilon=0.2, lip_weight=0.5, penalty_scaling="sample"),
    R.GradientNormPenalty(lip_weight=0.5, order=2),
    R.PGDTraining(epsilon=0.2, norm="linf", steps=3, random_start=False, clip_min=0.0, clip_max=1.0),
]


@pytest.mark.parametrize("objective", OBJECTIVES, ids=lambda o: type(o).__name__)
def test_fit_with_callbacks_and_keras_save_load(objective, tmp_path):
    x, y = _toy_data()
    model = _mlp("relu", input_dim=6, hidden=8)
    initial = _weights(model)
    trainer = _compile(R.RobustTrainingModel(model, objective))
    logged = []
    checkpoint = tmp_path / "trainer.keras"
    callbacks = [
        keras.callbacks.LambdaCallback(on_epoch_end=lambda epoch, logs: logged.append(dict(logs))),
        keras.callbacks.ModelCheckpoint(checkpoint),
    ]
    trainer.fit(x, y, batch_size=8, epochs=2, callbacks=callbacks, validation_data=(x, y), verbose=0)
    assert len(logged) == 2 and {"loss", "accuracy", "penalty", "val_loss"} <= set(logged[-1])
    # Validation is the plain loss on clean inputs.
    clean_loss = float(np.mean(_losses(model, x, y)))
    assert trainer.evaluate(x, y, verbose=0, return_dict=True)["loss"] == pytest.approx(clean_loss, rel=1e-5)
    has_penalty = isinstance(objective, (R.Tulip, R.GradientNormPenalty))
    assert (logged[-1]["penalty"] > 0) == has_penalty
    assert any(not np.allclose(a, b) for a, b in zip(initial, _weights(model)))

    restored = keras.models.load_model(checkpoint)
    assert isinstance(restored, R.RobustTrainingModel)
    assert type(restored.objective) is type(objective)
    assert restored.objective.get_config() == objective.get_config()
    np.testing.assert_allclose(restored.predict(x, verbose=0), trainer.predict(x, verbose=0), rtol=1e-6)
    # Compile state and optimizer moments come back: training goes on identically.
    trainer.fit(x, y, batch_size=8, epochs=1, shuffle=False, verbose=0)
    restored.fit(x, y, batch_size=8, epochs=1, shuffle=False, verbose=0)
    for a, b in zip(_weights(model), _weights(restored.model)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)

    # The trained network itself is a plain Keras model.
    model.save(tmp_path / "model.keras")
    plain = keras.models.load_model(tmp_path / "model.keras")
    assert not isinstance(plain, R.RobustTrainingModel)
    np.testing.assert_allclose(plain.predict(x, verbose=0), model.predict(x, verbose=0), rtol=1e-6)


def test_fit_builds_an_unbuilt_model_and_accepts_loss_names():
    x, y = _toy_data()
    model = keras.Sequential([keras.layers.Dense(8, activation="tanh"), keras.layers.Dense(3)])
    trainer = R.RobustTrainingModel(model, "J2-Lip")
    trainer.compile("sgd", loss="sparse_categorical_crossentropy")
    history = trainer.fit(x, y, epochs=1, verbose=0)
    assert trainer.built and model.built
    assert np.isfinite(history.history["loss"][0]) and history.history["penalty"][0] > 0


def _tanh_mlp_penalty_reference(model, x, y, lip_weight):
    """numpy: mean cross-entropy and lip_weight * max_i ||grad_x l_i||_2 of a Dense-tanh-Dense net."""
    w1, b1, w2, b2 = [np.asarray(w, np.float64) for w in model.get_weights()]
    hidden = np.tanh(x.astype(np.float64) @ w1 + b1)
    logits = hidden @ w2 + b2
    shifted = np.exp(logits - logits.max(axis=1, keepdims=True))
    probabilities = shifted / shifted.sum(axis=1, keepdims=True)
    losses = -np.log(probabilities[np.arange(len(y)), y])
    upstream = probabilities - np.eye(logits.shape[1])[y]
    input_gradients = ((upstream @ w2.T) * (1.0 - hidden**2)) @ w1.T
    return losses.mean(), lip_weight * np.linalg.norm(input_gradients, axis=1).max()


def test_tulip_trains_on_the_active_backend_with_the_exact_penalty():
    # Runs on TensorFlow, JAX and torch (the backend legs of .ci/run): the logged loss and penalty of
    # a full-batch step are those of the weights before it, here recomputed in numpy.
    x, y = _toy_data(n=16)
    model = _mlp("tanh", input_dim=6, hidden=8)
    lip_weight = 0.5
    data_loss, penalty = _tanh_mlp_penalty_reference(model, x, y, lip_weight)
    trainer = _compile(R.RobustTrainingModel(model, R.Tulip(0.0, lip_weight, penalty_scaling="sample")))
    first = trainer.fit(x, y, batch_size=len(x), epochs=1, shuffle=False, verbose=0).history
    assert first["penalty"][0] == pytest.approx(penalty, rel=1e-4)
    assert first["loss"][0] == pytest.approx(data_loss + penalty, rel=1e-4)
    data_loss_after, penalty_after = _tanh_mlp_penalty_reference(model, x, y, lip_weight)
    assert (data_loss_after, penalty_after) != (data_loss, penalty)
    second = trainer.fit(x, y, batch_size=len(x), epochs=1, shuffle=False, verbose=0).history
    assert second["penalty"][0] == pytest.approx(penalty_after, rel=1e-4)
    assert second["loss"][0] == pytest.approx(data_loss_after + penalty_after, rel=1e-4)


def test_unsupported_backend_raises_a_clear_error(monkeypatch):
    # Keras's numpy backend has no autodiff; its name is faked where the library reads it.
    model = _mlp("relu")
    monkeypatch.setattr(keras.backend, "backend", lambda: "numpy")
    calls = [
        lambda: R.RobustTrainingModel(model, "J2-Lip"),
        lambda: R.loss_input_gradient(model, ce_per_sample, *_batch(dtype="float32")),
        lambda: R.lipschitz_estimate(model, np.zeros((2, 5))),
        lambda: R.adversarial_distances(model, np.zeros((2, 5)), [0, 1]),
        lambda: R.error_at_eps(model, np.zeros((2, 5)), [0, 1], 0.1),
    ]
    for call in calls:
        with pytest.raises(NotImplementedError, match="'numpy'.*Set KERAS_BACKEND"):
            call()


@pytest.mark.parametrize(
    "make, argument",
    [
        (lambda: R.Tulip(penalty_scaling="max"), "penalty_scaling"),
        (lambda: R.Tulip(lip_weight=-1.0), "lip_weight"),
        (lambda: R.L2AdversarialTraining(epsilon=-0.1), "epsilon"),
        (lambda: R.GradientNormPenalty(order=3), "order"),
        (lambda: R.GradientNormPenalty(step=0.0), "step"),
        (lambda: R.PGDTraining(epsilon=0.1, norm="l1"), "norm"),
        (lambda: R.PGDTraining(epsilon=0.1, steps=0), "steps"),
        (lambda: R.FGSMTraining(clip_min=1.0, clip_max=0.0), "clip_min"),
        (lambda: R.get_objective("J3"), "objective"),
        (lambda: R.RobustTrainingModel(_mlp("relu")).compile("sgd", loss=["mse", "mse"]), "loss"),
        (lambda: R.adversarial_distances(_mlp("relu"), np.zeros((2, 5)), [0, 1], norm="l3"), "norm"),
    ],
)
def test_bad_arguments_raise_value_error_naming_them(make, argument):
    with pytest.raises(ValueError, match=argument):
        make()


def test_non_model_is_rejected():
    with pytest.raises(TypeError, match="model"):
        R.RobustTrainingModel(lambda x: x)


def test_get_objective_paper_names_and_round_trip():
    assert type(R.get_objective("J0")) is R.PlainTraining
    assert type(R.get_objective("J1")) is R.FGSMTraining
    assert type(R.get_objective("J2")) is R.L2AdversarialTraining
    tulip = R.get_objective("J2-Lip")
    assert (tulip.epsilon, tulip.lip_weight, tulip.penalty_scaling) == (0.01, 0.1, "batch_mean")
    for objective in OBJECTIVES:
        restored = R.get_objective(keras.saving.serialize_keras_object(objective))
        assert type(restored) is type(objective) and restored.get_config() == objective.get_config()


# ------------------------------------------------------------------- measurements


def _linear_classifier(input_dim=6, classes=4):
    keras.utils.set_random_seed(2)
    return keras.Sequential([keras.Input((input_dim,)), keras.layers.Dense(classes, bias_initializer="random_normal")])


def _exact_linear_distances(model, x, y):
    """Minimal l2 distance to another class of a linear classifier (unbounded inputs)."""
    kernel, bias = (np.asarray(w, np.float64) for w in model.get_weights())
    logits = x.astype(np.float64) @ kernel + bias
    distances = np.full(len(x), np.inf)
    for i, label in enumerate(y):
        if logits[i].argmax() != label:
            distances[i] = 0.0
            continue
        for j in range(kernel.shape[1]):
            if j != label:
                gap = logits[i, label] - logits[i, j]
                distances[i] = min(distances[i], gap / np.linalg.norm(kernel[:, label] - kernel[:, j]))
    return distances


def test_adversarial_distances_of_a_linear_classifier_are_exact():
    model = _linear_classifier()
    rng = np.random.default_rng(0)
    x = rng.normal(size=(40, 6)).astype("float32")
    y = rng.integers(0, 4, size=40)
    exact = _exact_linear_distances(model, x, y)
    found = R.adversarial_distances(
        model, x, y, norm="l2", max_epsilon=4.0, bisection_steps=14, clip_min=None, clip_max=None
    )
    assert np.sum(exact == 0) > 0  # some points start misclassified
    np.testing.assert_array_equal(found == 0, exact == 0)
    # An attack never beats the true minimum; with the margin loss it reaches it.
    assert np.all(found >= exact * (1 - 1e-4))
    # Attacks without restarts can stall at another class's local maximum: the battery
    # gives an upper bound that is tight for most points.
    tight = found <= exact * 1.01 + 1e-3
    assert np.mean(tight) >= 0.9, np.c_[found, exact][~tight]
    assert R.median_adversarial_distance(
        model, x, y, max_epsilon=4.0, bisection_steps=14, clip_min=None, clip_max=None
    ) == pytest.approx(np.median(exact), rel=1e-2)


def test_error_at_eps_matches_the_exact_error_of_a_linear_classifier():
    model = _linear_classifier()
    rng = np.random.default_rng(1)
    x = rng.normal(size=(60, 6)).astype("float32")
    y = rng.integers(0, 4, size=60)
    exact = _exact_linear_distances(model, x, y)
    assert R.error_at_eps(model, x, y, 0.0, clip_min=None, clip_max=None) == pytest.approx(np.mean(exact == 0))
    for epsilon in (0.2, 0.5, 1.0):
        measured = R.error_at_eps(model, x, y, epsilon, clip_min=None, clip_max=None)
        # Points within 2% of the radius may go either way.
        assert np.mean(exact <= 0.98 * epsilon) <= measured <= np.mean(exact <= 1.02 * epsilon)
    np.testing.assert_allclose(
        R.error_curve(exact, [0.0, 0.5, np.inf]), [np.mean(exact == 0), np.mean(exact <= 0.5), 1.0]
    )


def test_lipschitz_estimate_of_linear_and_relu_networks():
    linear = _linear_classifier()
    x = np.random.default_rng(0).normal(size=(20, 6)).astype("float32")
    kernel = np.asarray(linear.get_weights()[0], np.float64)
    assert R.lipschitz_estimate(linear, x) == pytest.approx(np.linalg.norm(kernel, 2), rel=1e-5)

    relu = _mlp("relu", input_dim=6, hidden=10)
    w1, b1, w2, _ = (np.asarray(w, np.float64) for w in relu.get_weights())
    jacobian_norms = [
        np.linalg.norm(w2.T @ np.diag((point @ w1 + b1 > 0).astype(float)) @ w1.T, 2) for point in x.astype(np.float64)
    ]
    assert R.lipschitz_estimate(relu, x, batch_size=7) == pytest.approx(max(jacobian_norms), rel=1e-5)


# ------------------------------------------------------------------------- MNIST


@pytest.mark.slow
@pytest.mark.skipif(not data_available("mnist"), reason="mnist.npz not in $DEEL_LIP_EXT_DATA")
def test_tulip_enlarges_the_median_adversarial_distance_on_mnist():
    from deel_lip_ext import datasets

    x_train, y_train, x_test, y_test = datasets.load_numpy("mnist", num_train=3000, num_test=200)
    medians = {}
    for name, objective in (("J0", R.PlainTraining()), ("J2-Lip", R.Tulip(0.5, 0.1, penalty_scaling="sample"))):
        keras.utils.set_random_seed(0)
        model = keras.Sequential(
            [
                keras.Input((28, 28, 1)),
                keras.layers.Flatten(),
                keras.layers.Dense(128, activation="relu"),
                keras.layers.Dense(10),
            ]
        )
        trainer = R.RobustTrainingModel(model, objective)
        trainer.compile(keras.optimizers.Adam(1e-3), SPARSE_CE)
        trainer.fit(x_train, y_train, epochs=3, batch_size=64, verbose=0)
        medians[name] = R.median_adversarial_distance(
            model, x_test, y_test, norm="l2", max_epsilon=6.0, bisection_steps=10
        )
    print(f"median l2 adversarial distance on 200 MNIST test images: {medians}")
    assert medians["J2-Lip"] > 1.2 * medians["J0"], medians
