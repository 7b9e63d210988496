"""Gradient attacks (FGSM, PGD) and an empirical check of certificates (TensorFlow).

The attacks are batched, stay in the eps-ball (L2: per-sample projection;
l_inf: clipping) and in the input box [clip_min, clip_max], and maximize either
the softmax cross-entropy of the logits (`loss="ce"`) or the Carlini-Wagner
margin max_{j != y} f_j - f_y (`loss="cw"`, the better choice against
confident Lipschitz models whose cross-entropy gradient vanishes). A model with
a single logit (output (N, 1)) is a binary classifier: labels in {0,1} or
{-1,1}, "ce" is the logistic loss of s f and "cw" is -s f.

`pgd` returns, for each sample, the best point it visited over all steps and
restarts: the one with the largest margin loss (a misclassifying one whenever
found). `verify_certificates` uses it to try to break every certified point.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
import weakref
from collections.abc import Callable, Sequence

import keras
import numpy as np
from numpy.typing import ArrayLike

from deel_lip_ext.certification import (
    certified_radius,
    check_epsilon,
    check_labels,
    check_norm,
    iterate_batches,
    make_progbar,
    radius_conversion,
    resolve_lip_const,
)

__all__ = ["fgsm", "pgd", "verify_certificates", "VerificationResult", "LOSSES"]

LOSSES = ("ce", "cw")

# One compiled run per (model, norm, loss): retracing per call would dominate small attacks.
_RUN_CACHE = weakref.WeakKeyDictionary()


def _tf():
    import tensorflow as tf

    return tf


def _check_loss(loss):
    if loss not in LOSSES:
        raise ValueError(f"loss must be one of {LOSSES}, got {loss!r}.")
    return loss


def _check_positive_int(name, value):
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}.")
    return int(value)


def _check_step_size(step_size):
    if isinstance(step_size, bool) or not isinstance(step_size, numbers.Real) or not step_size > 0:
        raise ValueError(f"step_size must be a number > 0, got {step_size!r}.")
    return float(step_size)


def _check_box(clip_min, clip_max):
    low = -np.inf if clip_min is None else float(clip_min)
    high = np.inf if clip_max is None else float(clip_max)
    if not low < high:
        raise ValueError(f"clip_min must be < clip_max, got clip_min={clip_min!r}, clip_max={clip_max!r}.")
    return low, high


def _margin_and_loss(logits, target, loss):
    """Per-sample attack objective (to maximize) and margin loss max_{j != y} f_j - f_y."""
    tf = _tf()
    if logits.shape[-1] == 1:
        signed = tf.where(target[:, 0] > 0, 1.0, -1.0) * logits[:, 0]
        margin_loss = -signed
        objective = tf.nn.softplus(-signed) if loss == "ce" else margin_loss
        return objective, margin_loss
    is_target = target > 0
    target_logit = tf.reduce_sum(tf.where(is_target, logits, 0.0), axis=-1)
    best_other = tf.reduce_max(tf.where(is_target, -np.inf, logits), axis=-1)
    margin_loss = best_other - target_logit
    if loss == "ce":
        objective = tf.reduce_logsumexp(logits, axis=-1) - target_logit
    else:
        objective = margin_loss
    return objective, margin_loss


def _per_sample_norm(t, order):
    tf = _tf()
    flat = tf.reshape(t, (tf.shape(t)[0], -1))
    value = tf.norm(flat, axis=1) if order == "l2" else tf.reduce_max(tf.abs(flat), axis=1)
    return tf.reshape(value, [-1] + [1] * (len(t.shape) - 1))


def _project(x_adv, x_clean, eps, norm, low, high):
    tf = _tf()
    delta = x_adv - x_clean
    if norm == "l2":
        delta = delta * tf.minimum(1.0, eps / tf.maximum(_per_sample_norm(delta, "l2"), 1e-12))
    else:
        delta = tf.clip_by_value(delta, -eps, eps)
    return tf.clip_by_value(x_clean + delta, low, high)


def _build_run(model, norm, loss):
    """A compiled PGD run: `steps` steps from `x_start`, tracking each sample's best point.

    Returns (best point, its margin loss); the best is over the incoming
    `best_x` and every visited point, the last one included.
    """
    tf = _tf()

    def margin_loss_and_gradient(x_adv, target):
        with tf.GradientTape() as tape:
            tape.watch(x_adv)
            logits = tf.cast(model(x_adv, training=False), tf.float32)
            objective, margin_loss = _margin_and_loss(logits, target, loss)
            total = tf.reduce_sum(objective)
        return margin_loss, tape.gradient(total, x_adv)

    def keep_better(best_x, best_loss, candidate, candidate_loss):
        better = candidate_loss > best_loss
        mask = tf.reshape(better, [-1] + [1] * (len(candidate.shape) - 1))
        return tf.where(mask, candidate, best_x), tf.where(better, candidate_loss, best_loss)

    @tf.function(reduce_retracing=True)
    def run(x_start, x_clean, target, best_x, best_loss, eps, step_size, low, high, steps):
        x_adv = x_start
        for _ in tf.range(steps):
            margin_loss, grad = margin_loss_and_gradient(x_adv, target)
            best_x, best_loss = keep_better(best_x, best_loss, x_adv, margin_loss)
            if norm == "l2":
                direction = grad / tf.maximum(_per_sample_norm(grad, "l2"), 1e-12)
            else:
                direction = tf.sign(grad)
            x_adv = _project(x_adv + step_size * direction, x_clean, eps, norm, low, high)
        final_loss = _margin_and_loss(tf.cast(model(x_adv, training=False), tf.float32), target, "cw")[1]
        return keep_better(best_x, best_loss, x_adv, final_loss)

    return run


def _compiled_run(model, norm, loss):
    per_model = _RUN_CACHE.setdefault(model, {})
    if (norm, loss) not in per_model:
        per_model[(norm, loss)] = _build_run(model, norm, loss)
    return per_model[(norm, loss)]


def _fgsm_step(model, x, target, eps, norm, loss, low, high):
    tf = _tf()
    with tf.GradientTape() as tape:
        tape.watch(x)
        objective, _ = _margin_and_loss(tf.cast(model(x, training=False), tf.float32), target, loss)
        total = tf.reduce_sum(objective)
    grad = tape.gradient(total, x)
    direction = grad / tf.maximum(_per_sample_norm(grad, "l2"), 1e-12) if norm == "l2" else tf.sign(grad)
    return tf.clip_by_value(x + eps * direction, low, high)


def _margin_loss_at(model, x, target):
    tf = _tf()
    logits = tf.cast(model(x, training=False), tf.float32)
    return _margin_and_loss(logits, target, "cw")[1]


def _random_start(x, eps, norm, low, high, rng):
    tf = _tf()
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
    return tf.clip_by_value(x + tf.constant(delta, x.dtype), low, high)


def _attack_batch(model, x, target, eps, norm, steps, step_sizes, loss, random_start, restarts, low, high, rng):
    """Best point (largest margin loss) over every step, step size and restart, with its margin loss."""
    tf = _tf()
    run = _compiled_run(model, norm, loss)
    x = tf.convert_to_tensor(x, tf.float32)
    target = tf.convert_to_tensor(target, tf.float32)
    best_x, best_loss = x, _margin_loss_at(model, x, target)
    if eps == 0:
        return best_x, best_loss
    constants = [tf.constant(v, tf.float32) for v in (eps, low, high)]
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
                tf.constant(step_size, tf.float32),
                constants[1],
                constants[2],
                tf.constant(steps, tf.int32),
            )
    return best_x, best_loss


def _prepare(model, x, y, eps, norm, loss, clip_min, clip_max, batch_size):
    check_norm(norm)
    _check_loss(loss)
    eps = check_epsilon(eps)
    low, high = _check_box(clip_min, clip_max)
    x = np.asarray(x, dtype="float32")
    batch_size = len(x) if batch_size is None else _check_positive_int("batch_size", batch_size)
    logits = np.asarray(model(x[: min(len(x), 2)], training=False))
    if len(y) != len(x):
        raise ValueError(f"y must hold one label per sample of x: got {len(y)} labels for {len(x)} samples.")
    # Validate on the whole set (cheap) with the model's number of outputs.
    target = check_labels(np.zeros((len(x), logits.shape[-1]), "float32"), y)
    return x, target, eps, low, high, max(batch_size, 1)


def _run_attack(
    model, x, target, eps, norm, steps, step_sizes, loss, random_start, restarts, low, high, batch_size, seed
):
    rng = np.random.default_rng(seed)
    adversarial, margin_losses = [], []
    for start in range(0, len(x), batch_size):
        stop = start + batch_size
        best_x, best_loss = _attack_batch(
            model,
            x[start:stop],
            target[start:stop],
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
        adversarial.append(best_x.numpy())
        margin_losses.append(best_loss.numpy())
    if not adversarial:
        return x.copy(), np.zeros((0,), "float32")
    return np.concatenate(adversarial), np.concatenate(margin_losses)


def fgsm(
    model: keras.Model,
    x: ArrayLike,
    y: ArrayLike,
    eps: float,
    norm: str = "linf",
    loss: str | Callable = "ce",
    clip_min: float = 0.0,
    clip_max: float = 1.0,
    batch_size: int | None = None,
) -> np.ndarray:
    """Fast gradient (sign) method: one step of length eps along the loss gradient.

    Args:
        model: Keras classifier returning logits (N, C); C == 1 is binary.
        x: inputs (N, ...); y: labels (indices, one-hot, or binary {0,1}/{-1,1}).
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
    x, target, eps, low, high, batch_size = _prepare(model, x, y, eps, norm, loss, clip_min, clip_max, batch_size)
    if eps == 0:
        return np.clip(x, low, high)
    tf = _tf()
    out = []
    for start in range(0, len(x), batch_size):
        xb = tf.convert_to_tensor(x[start : start + batch_size])
        tb = tf.convert_to_tensor(target[start : start + batch_size])
        out.append(_fgsm_step(model, xb, tb, eps, norm, loss, low, high).numpy())
    return np.concatenate(out) if out else x.copy()


def pgd(
    model: keras.Model,
    x: ArrayLike,
    y: ArrayLike,
    eps: float,
    norm: str = "l2",
    steps: int = 40,
    step_size: float | None = None,
    loss: str | Callable = "ce",
    random_start: bool = True,
    restarts: int = 1,
    clip_min: float = 0.0,
    clip_max: float = 1.0,
    batch_size: int | None = None,
    seed: int | None = None,
) -> np.ndarray:
    """Projected gradient ascent on the loss inside the eps-ball and the input box.

    Each step moves by `step_size` along g / ||g||_2 (L2) or sign(g) (l_inf),
    then projects onto the ball and clips to [clip_min, clip_max]. Every
    restart starts from a uniform random point of the ball (or from x when
    `random_start=False`); the returned point is, per sample, the best visited
    (largest margin loss, so a misclassifying point whenever one was found).

    Args:
        model: Keras classifier returning logits (N, C); C == 1 is binary.
        x: inputs (N, ...); y: labels (indices, one-hot, or binary {0,1}/{-1,1}).
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
    x, target, eps, low, high, batch_size = _prepare(model, x, y, eps, norm, loss, clip_min, clip_max, batch_size)
    steps = _check_positive_int("steps", steps)
    restarts = _check_positive_int("restarts", restarts)
    if eps == 0:
        return np.clip(x, low, high)
    step_size = 2.5 * eps / steps if step_size is None else _check_step_size(step_size)
    adversarial, _ = _run_attack(
        model, x, target, eps, norm, steps, (step_size,), loss, random_start, restarts, low, high, batch_size, seed
    )
    return adversarial


@dataclasses.dataclass
class VerificationResult:
    """What `verify_certificates` found at one epsilon.

    Attributes:
        eps, norm: the attack budget.
        n_samples: points attacked or checked.
        n_correct: correctly classified clean points (positive margin).
        n_certified: points whose certified radius exceeds eps.
        n_broken: certified points the attack misclassified (must be 0).
        broken_indices: their indices in x.
        clean_accuracy, certified_accuracy: n_correct / n, n_certified / n.
        empirical_robust_accuracy: fraction of points still correctly
            classified after the attack (an upper bound of the true robust
            accuracy, which the certified accuracy bounds from below).
        lip_const: the Lipschitz bound the certificates used.
    """

    eps: float
    norm: str
    n_samples: int
    n_correct: int
    n_certified: int
    n_broken: int
    broken_indices: np.ndarray
    clean_accuracy: float
    certified_accuracy: float
    empirical_robust_accuracy: float
    lip_const: float

    def __str__(self):
        return (
            f"eps={self.eps:g} ({self.norm}): clean {self.clean_accuracy:.2%}, certified "
            f"{self.certified_accuracy:.2%}, empirical robust {self.empirical_robust_accuracy:.2%}, "
            f"{self.n_broken} of {self.n_certified} certificates broken"
        )


def verify_certificates(
    model: keras.Model,
    x: ArrayLike,
    y: ArrayLike,
    eps: float,
    norm: str = "l2",
    lip_const: float | None = None,
    steps: int = 100,
    restarts: int = 2,
    step_sizes: Sequence[float] | None = None,
    loss: str | Callable = "cw",
    clip_min: float = 0.0,
    clip_max: float = 1.0,
    batch_size: int = 256,
    lip_norm: str = "l2",
    disjoint_neurons: bool = False,
    seed: int = 0,
    verbose: bool | str = "auto",
) -> VerificationResult:
    """Attack every correctly classified point at `eps` and count broken certificates.

    The certificates are those of `deel_lip_ext.certification.certified_radius`
    with `lip_const` (None: the computed bound `model_lipschitz_bound(model)`).
    A certified point that the attack misclassifies is a broken certificate:
    a bug in the library or a wrong `lip_const`.

    Args:
        model: Keras classifier returning logits (N, C); C == 1 is binary.
        x: inputs (N, ...); y: labels (indices, one-hot, or binary {0,1}/{-1,1}).
        eps: perturbation budget (>= 0).
        norm: "l2" or "linf".
        lip_const: Lipschitz bound; None computes it.
        steps: PGD steps per run.
        restarts: random restarts per step size.
        step_sizes: PGD step lengths to try; None: eps * (0.5, 0.1, 0.025).
        loss: "cw" (margin, default) or "ce".
        clip_min: input box (None: unbounded).
        clip_max: input box (None: unbounded).
        batch_size: attack this many samples at a time.
        lip_norm: "l2" or "linf", the norm `lip_const` holds for (see `certify`).
        disjoint_neurons: only each logit separately is L-Lipschitz.
        seed: seed of the random starts.
        verbose: True, False or "auto" (a progress bar from 4 batches on).

    Returns:
        A `VerificationResult`.

    Examples:
        >>> result = verify_certificates(model, x_test[:500], y_test[:500], eps=1.58)
        >>> assert result.n_broken == 0
    """
    x, target, eps, low, high, batch_size = _prepare(model, x, y, eps, norm, loss, clip_min, clip_max, batch_size)
    steps = _check_positive_int("steps", steps)
    restarts = _check_positive_int("restarts", restarts)
    if step_sizes is None:
        step_sizes = tuple(eps * f for f in (0.5, 0.1, 0.025)) if eps > 0 else (1.0,)
    step_sizes = tuple(_check_step_size(s) for s in np.atleast_1d(step_sizes))
    lip_const = resolve_lip_const(model, lip_const)
    certificate_norm, factor = radius_conversion(norm, lip_norm, int(np.prod(x.shape[1:])))

    n_batches = math.ceil(len(x) / batch_size)
    progbar = make_progbar(n_batches, verbose)
    correct, certified, robust = [], [], []
    rng = np.random.default_rng(seed)
    for index, (xb, tb) in enumerate(iterate_batches((x, target), batch_size)):
        logits = np.asarray(model(xb, training=False))
        radius = certified_radius(logits, tb, certificate_norm, lip_const, disjoint_neurons) * factor
        _, margin_loss = _attack_batch(
            model, xb, tb, eps, norm, steps, step_sizes, loss, True, restarts, low, high, rng
        )
        clean_margin = -_margin_loss_at(model, xb, tb).numpy()
        correct.append(clean_margin > 0)
        certified.append(radius > eps)
        robust.append((margin_loss.numpy() < 0) & (clean_margin > 0))
        if progbar is not None:
            progbar.update(index + 1)
    correct, certified, robust = (np.concatenate(v) if v else np.zeros(0, bool) for v in (correct, certified, robust))
    broken = np.flatnonzero(certified & ~robust)
    n = max(len(x), 1)
    return VerificationResult(
        eps=eps,
        norm=norm,
        n_samples=len(x),
        n_correct=int(correct.sum()),
        n_certified=int(certified.sum()),
        n_broken=int(broken.size),
        broken_indices=broken,
        clean_accuracy=float(correct.sum() / n),
        certified_accuracy=float(certified.sum() / n),
        empirical_robust_accuracy=float(robust.sum() / n),
        lip_const=lip_const,
    )
