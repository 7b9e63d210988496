r"""FGSM and PGD: the one projected-gradient machinery of the library, for attacks and for training.

The attacks stay in the eps-ball (L2: per-sample projection; l_inf: clipping) and in the input box
[clip_min, clip_max], and maximize either the softmax cross-entropy of the logits (`loss="ce"`) or the Carlini-Wagner
margin $\max_{j \ne y} f_j - f_y$ (`loss="cw"`, the better choice against confident Lipschitz models whose
cross-entropy gradient vanishes). A model with a single logit (output (N, 1)) is a binary classifier: labels in {0,1}
or {-1,1}, "ce" is the logistic loss of s f and "cw" is -s f.

One step is `deel_lip_ext.attacks.steps.pgd_step`: x' = box(x + project(x_adv + step * d - x)), with d the
steepest-ascent direction of the loss (`ascent_direction`). It serves

* `pgd` and `fgsm` (numpy in, numpy out): batched, compiled once per (model, norm, loss); `pgd` returns, for each
  sample, the best point visited over all steps and restarts (the largest margin loss, a misclassifying one whenever
  found);
* `pgd_perturbation`: the same steps on symbolic tensors inside a training step
  (`deel_lip_ext.regularization.PGDTraining`), one epsilon per sample allowed.

Input gradients and compilation come from `deel_lip_ext._autodiff` (TensorFlow, JAX, torch).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import keras
import numpy as np
from keras import ops
from numpy.typing import ArrayLike

from deel_lip_ext import _autodiff as autodiff
from deel_lip_ext.attacks.steps import (
    as_column,
    ascent_direction,
    clip_to_box,
    pgd_step,
    random_ball_start,
)
from deel_lip_ext._validation import (
    check_choice,
    check_clip_range,
    check_inside_box,
    check_int,
    check_labels,
    check_norm,
    check_number,
)

__all__ = [
    "LOSSES",
    "pgd_perturbation",
    "fgsm",
    "pgd",
]

LOSSES = ("ce", "cw")

# One compiled run per (model, norm, loss, steps): retracing per call would dominate small attacks.
_RUN_CACHE = autodiff.compiled_cache()


def as_float_tensor(x: ArrayLike):
    """`x` as a tensor of a float dtype (integers are cast to floatx)."""
    x = ops.convert_to_tensor(x)
    if "float" not in keras.backend.standardize_dtype(x.dtype):
        x = ops.cast(x, keras.config.floatx())
    return x


def detached_ascent_direction(model: keras.Model, loss_fn: Callable, x: ArrayLike, y: ArrayLike, norm: str):
    """Steepest-ascent direction of the per-sample loss at x, in inference mode, without gradient."""

    def evaluate(inputs):
        y_pred = model(inputs, training=False)
        return loss_fn(y, y_pred), y_pred

    _, _, gradient = autodiff.value_and_input_gradient(evaluate, x)
    return ops.stop_gradient(ascent_direction(gradient, norm))


def pgd_perturbation(
    model: keras.Model,
    loss_fn: Callable,
    x: ArrayLike,
    y: ArrayLike,
    epsilon: float,
    norm: str = "l2",
    steps: int = 7,
    step_size: float | None = None,
    random_start: bool = True,
    clip_min: float | None = None,
    clip_max: float | None = None,
    seed: int | None = None,
) -> Any:
    """In-graph projected gradient ascent on the loss (Madry et al.), for training steps.

    Unlike `pgd` (numpy in, numpy out), this runs inside `train_step` on
    symbolic tensors and accepts one epsilon per sample.

    Args:
        model: a Keras model (inference mode is used).
        loss_fn: per-sample loss `loss_fn(y_true, y_pred)` -> (batch,).
        x: input batch (float).
        y: targets.
        epsilon: radius, a float or a (batch,) tensor.
        norm: "l2" or "linf".
        steps: number of ascent steps.
        step_size: step length; None means 2.5 * epsilon / steps.
        random_start: start uniformly in the epsilon-ball instead of at x.
        clip_min: valid input range (None: unbounded).
        clip_max: valid input range (None: unbounded).
        seed: int or `keras.random.SeedGenerator` for the random start.

    Returns:
        The adversarial batch, detached (no gradient flows through it).

    Examples:
        >>> x_adv = pgd_perturbation(model, cross_entropy_loss, x, y, epsilon=1.0)
    """
    check_choice(norm, "norm", ("l2", "linf"))
    steps = check_int(steps, "steps")
    autodiff.require_supported_backend("pgd_perturbation")
    x = as_float_tensor(x)
    epsilon = ops.cast(epsilon, x.dtype)
    if len(epsilon.shape) == 1:
        epsilon = as_column(epsilon, x)
    step_size = 2.5 * epsilon / steps if step_size is None else ops.cast(step_size, x.dtype)
    x_adv = clip_to_box(random_ball_start(x, epsilon, norm, seed) if random_start else x, clip_min, clip_max)
    for _ in range(steps):
        direction_gradient = detached_ascent_direction(model, loss_fn, x_adv, y, norm)
        x_adv = pgd_step(x_adv, x, direction_gradient, epsilon, step_size, norm, clip_min, clip_max)
    return ops.stop_gradient(x_adv)


# ---------------------------------------------------------------- compiled attacks (numpy in, numpy out)


def _margin_and_loss(logits, target, loss):
    """Per-sample attack objective (to maximize) and margin loss max_{j != y} f_j - f_y."""
    if logits.shape[-1] == 1:
        signed = ops.where(target[:, 0] > 0, 1.0, -1.0) * logits[:, 0]
        margin_loss = -signed
        objective = ops.softplus(-signed) if loss == "ce" else margin_loss
        return objective, margin_loss
    is_target = target > 0
    target_logit = ops.sum(ops.where(is_target, logits, 0.0), axis=-1)
    best_other = ops.max(ops.where(is_target, -np.inf, logits), axis=-1)
    margin_loss = best_other - target_logit
    objective = ops.logsumexp(logits, axis=-1) - target_logit if loss == "ce" else margin_loss
    return objective, margin_loss


def _loss_and_gradient(model, x_adv, target, loss):
    """(margin loss, gradient of the summed objective) at x_adv, inference mode."""

    def evaluate(inputs):
        objective, margin_loss = _margin_and_loss(ops.cast(model(inputs, training=False), "float32"), target, loss)
        return objective, margin_loss

    _, margin_loss, gradient = autodiff.value_and_input_gradient(evaluate, x_adv)
    return margin_loss, gradient


def _keep_better(best_x, best_loss, candidate, candidate_loss):
    better = candidate_loss > best_loss
    return ops.where(as_column(better, candidate), candidate, best_x), ops.where(better, candidate_loss, best_loss)


def _build_run(model, norm, loss, steps):
    """A compiled PGD run: `steps` steps from `x_start`, tracking each sample's best point.

    Returns (best point, its margin loss); the best is over the incoming `best_x` and every visited point, the last one
    included. `steps` is a Python int of the closure (JAX traces every argument; a fixed count is a loop every backend
    compiles).
    """

    def run(x_start, x_clean, target, best_x, best_loss, eps, step_size, low, high):
        def body(_, state):
            x_adv, best_x, best_loss = state
            margin_loss, gradient = _loss_and_gradient(model, x_adv, target, loss)
            best_x, best_loss = _keep_better(best_x, best_loss, x_adv, margin_loss)
            return pgd_step(x_adv, x_clean, gradient, eps, step_size, norm, low, high), best_x, best_loss

        x_adv, best_x, best_loss = ops.fori_loop(0, steps, body, (x_start, best_x, best_loss))
        return _keep_better(best_x, best_loss, x_adv, margin_loss_at(model, x_adv, target))

    return autodiff.graph_function(run, model.variables)


def _compiled_run(model, norm, loss, steps):
    per_model = _RUN_CACHE.setdefault(model, {})
    if (norm, loss, steps) not in per_model:
        per_model[(norm, loss, steps)] = _build_run(model, norm, loss, steps)
    return per_model[(norm, loss, steps)]


def margin_loss_at(model, x, target):
    return _margin_and_loss(ops.cast(model(x, training=False), "float32"), target, "cw")[1]


def _random_start(x, eps, norm, low, high, rng):
    """A uniform point of the eps-ball around each sample from the numpy generator `rng`, clipped to the box."""
    shape = x.shape
    if norm == "linf":
        delta = rng.uniform(-eps, eps, size=shape)
    else:
        direction = rng.standard_normal(size=shape)
        axes = tuple(range(1, len(shape)))
        direction /= np.sqrt(np.sum(direction**2, axis=axes, keepdims=True))
        dim = int(np.prod(shape[1:]))
        radius = eps * rng.uniform(size=(shape[0],) + (1,) * (len(shape) - 1)) ** (1.0 / dim)
        delta = direction * radius
    return ops.clip(x + ops.convert_to_tensor(delta, x.dtype), low, high)


def attack_batch(model, x, target, eps, norm, steps, step_sizes, loss, random_start, restarts, low, high, rng):
    """Best point (largest margin loss) over every step, step size and restart, with its margin loss."""
    run = _compiled_run(model, norm, loss, steps)
    x = ops.convert_to_tensor(x, "float32")
    target = ops.convert_to_tensor(target, "float32")
    best_x, best_loss = x, margin_loss_at(model, x, target)
    if eps == 0:
        return best_x, best_loss
    constants = [ops.convert_to_tensor(v, "float32") for v in (eps, low, high)]
    for step_size in step_sizes:
        for _ in range(restarts):
            x_start = _random_start(x, eps, norm, low, high, rng) if random_start else x
            best_x, best_loss = run(
                x_start,
                x,
                target,
                best_x,
                best_loss,
                constants[0],
                ops.convert_to_tensor(step_size, "float32"),
                constants[1],
                constants[2],
            )
    return best_x, best_loss


def prepare_attack(model, x, y, eps, norm, loss, clip_min, clip_max, batch_size):
    """Checked arguments of an attack: (x, one-hot target, eps, low, high, batch size)."""
    autodiff.require_supported_backend("deel_lip_ext.attacks")
    check_norm(norm)
    check_choice(loss, "loss", LOSSES)
    eps = check_number(eps, "eps", minimum=0)
    check_clip_range(clip_min, clip_max)
    low = -np.inf if clip_min is None else float(clip_min)
    high = np.inf if clip_max is None else float(clip_max)
    x = np.asarray(x, dtype="float32")
    check_inside_box(x, clip_min, clip_max)
    batch_size = len(x) if batch_size is None else check_int(batch_size, "batch_size")
    logits = ops.convert_to_numpy(model(x[: min(len(x), 2)], training=False))
    if len(y) != len(x):
        raise ValueError(f"y must hold one label per sample of x: got {len(y)} labels for {len(x)} samples.")
    # Validate on the whole set (cheap) with the model's number of outputs.
    target = check_labels(np.zeros((len(x), logits.shape[-1]), "float32"), y)
    return x, target, eps, low, high, max(batch_size, 1)


def fgsm(
    model: keras.Model,
    x: ArrayLike,
    y: ArrayLike,
    eps: float,
    norm: str = "linf",
    loss: str = "ce",
    clip_min: float = 0.0,
    clip_max: float = 1.0,
    batch_size: int | None = None,
) -> np.ndarray:
    """Fast gradient (sign) method: one step of length eps along the loss gradient.

    Args:
        model: Keras classifier returning logits (N, C); C == 1 is binary.
        x: inputs (N, ...).
        y: labels (indices, one-hot, or binary {0,1}/{-1,1}).
        eps: perturbation budget (>= 0).
        norm: "linf" (x + eps sign(g)) or "l2" (x + eps g / ||g||).
        loss: "ce" (cross-entropy) or "cw" (margin).
        clip_min: input box (None: unbounded).
        clip_max: input box (None: unbounded).
        batch_size: attack this many samples at a time (None: all at once).

    Returns:
        numpy array of adversarial inputs, same shape as x.

    Examples:
        >>> x_adv = fgsm(model, x_test, y_test, eps=0.1)
    """
    x, target, eps, low, high, batch_size = prepare_attack(model, x, y, eps, norm, loss, clip_min, clip_max, batch_size)
    if eps == 0:
        return np.clip(x, low, high)
    out = []
    for start in range(0, len(x), batch_size):
        xb = ops.convert_to_tensor(x[start : start + batch_size])
        tb = ops.convert_to_tensor(target[start : start + batch_size])

        def evaluate(inputs, tb=tb):
            return _margin_and_loss(ops.cast(model(inputs, training=False), "float32"), tb, loss)

        _, _, gradient = autodiff.value_and_input_gradient(evaluate, xb)
        out.append(ops.convert_to_numpy(ops.clip(xb + eps * ascent_direction(gradient, norm), low, high)))
    return np.concatenate(out) if out else x.copy()


def run_attack(
    model, x, target, eps, norm, steps, step_sizes, loss, random_start, restarts, low, high, batch_size, seed
):
    """`attack_batch` over `x` in batches: (adversarial points, their margin losses) as numpy arrays."""
    rng = np.random.default_rng(seed)
    adversarial, margin_losses = [], []
    batch_size = min(batch_size, len(x))
    for start in range(0, len(x), batch_size):
        stop = start + batch_size
        # The last batch is padded with copies of its last sample: one shape, one compilation.
        count = len(x[start:stop])
        padding = np.full(batch_size - count, start + count - 1, dtype=int)
        rows = np.concatenate([np.arange(start, start + count), padding])
        best_x, best_loss = attack_batch(
            model,
            x[rows],
            target[rows],
            eps,
            norm,
            steps,
            step_sizes,
            loss,
            random_start,
            restarts,
            low,
            high,
            rng,
        )
        adversarial.append(ops.convert_to_numpy(best_x)[:count])
        margin_losses.append(ops.convert_to_numpy(best_loss)[:count])
    if not adversarial:
        return x.copy(), np.zeros((0,), "float32")
    return np.concatenate(adversarial), np.concatenate(margin_losses)


def pgd(
    model: keras.Model,
    x: ArrayLike,
    y: ArrayLike,
    eps: float,
    norm: str = "l2",
    steps: int = 40,
    step_size: float | None = None,
    loss: str = "ce",
    random_start: bool = True,
    restarts: int = 1,
    clip_min: float = 0.0,
    clip_max: float = 1.0,
    batch_size: int | None = None,
    seed: int | None = None,
) -> np.ndarray:
    """Projected gradient ascent on the loss inside the eps-ball and the input box.

    Each step moves by `step_size` along g / ||g||_2 (L2) or sign(g) (l_inf), then projects onto the ball and clips to
    [clip_min, clip_max] (`pgd_step`). Every restart starts from a uniform random point of the ball (or from x when
    `random_start=False`); the returned point is, per sample, the best visited (largest margin loss, so a misclassifying
    point whenever one was found).

    Args:
        model: Keras classifier returning logits (N, C); C == 1 is binary.
        x: inputs (N, ...).
        y: labels (indices, one-hot, or binary {0,1}/{-1,1}).
        eps: perturbation budget (>= 0).
        norm: "l2" or "linf".
        steps: number of steps per restart.
        step_size: step length (> 0); None: 2.5 * eps / steps (Madry et al.).
        loss: "ce" (softmax cross-entropy on the logits) or "cw" (margin).
        random_start: start each restart from a random point of the ball.
        restarts: number of runs; the best point over all of them is kept.
        clip_min: input box (None: unbounded).
        clip_max: input box (None: unbounded).
        batch_size: attack this many samples at a time (None: all at once).
        seed: seed of the random starts.

    Returns:
        numpy array of adversarial inputs, same shape as x.

    Examples:
        >>> x_adv = pgd(model, x_test, y_test, eps=1.0, norm="l2", steps=100, loss="cw")
        >>> robust_accuracy = np.mean(np.argmax(model.predict(x_adv), -1) == y_test)
    """
    x, target, eps, low, high, batch_size = prepare_attack(model, x, y, eps, norm, loss, clip_min, clip_max, batch_size)
    steps = check_int(steps, "steps")
    restarts = check_int(restarts, "restarts")
    if eps == 0:
        return np.clip(x, low, high)
    step_size = 2.5 * eps / steps if step_size is None else check_number(step_size, "step_size", minimum=0, strict=True)
    adversarial, _ = run_attack(
        model, x, target, eps, norm, steps, (step_size,), loss, random_start, restarts, low, high, batch_size, seed
    )
    return adversarial
