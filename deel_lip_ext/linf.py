"""Training and certification of l_inf-dist nets (Zhang et al., ICML 2021; ICLR 2022).

One import for the whole l_inf-dist workflow. Defined here:

* Certification: the Lipschitz rule (margin / 2 > L eps, through
  `deel_lip_ext.certification.certified_radius(norm="linf")`) and interval
  bound propagation (IBP) through l_inf-dist, Dense, monotone activation,
  rescaling and reshaping layers, with the last Dense layer elided; IBP is
  what the papers report as "certified" (`certify_ibp`, `evaluate_linf_robustness`).

Re-exported from their homes: the norm order (`set_p`, `distance_layers`, in
`deel_lip_ext.layers.linf`), the schedule (`LpScheduler`, `schedule_ratio`,
`scheduled_p`, in `deel_lip_ext.callbacks`), the losses (`LInfDistHinge`,
`ClippedHingeCrossEntropy`, `HybridIntervalCrossEntropy`, `worst_case_margins`,
in `deel_lip_ext.losses`) and the interval bounds (`interval_bounds`, in
`deel_lip_ext.interval`).

Epsilons of the losses are in the units of the logits' Lipschitz bound, i.e.
of the inputs of the first l_inf-dist layer (pixel eps / std when the model
starts with a `Rescaling(1 / std)`). The certification functions take pixel
epsilons and models whose input is the pixel image.
"""

from __future__ import annotations

import keras
import numpy as np
from keras import ops
from numpy.typing import ArrayLike

from deel_lip_ext._autodiff import compiled_inference, run_padded
from deel_lip_ext._certifiable import check_certifiable
from deel_lip_ext._validation import check_inside_box, check_number
from deel_lip_ext.attacks import pgd
from deel_lip_ext.callbacks import LpScheduler, schedule_ratio, scheduled_p
from deel_lip_ext.certification import certified_radius
from deel_lip_ext.interval import box_dtype, chain_layers, elided_margins, interval_bounds
from deel_lip_ext.layers.linf import distance_layers, set_p
from deel_lip_ext.losses.linf import (
    ClippedHingeCrossEntropy,
    HybridIntervalCrossEntropy,
    LInfDistHinge,
    worst_case_margins,
)
from deel_lip_ext.utils import layer_lipschitz_constant, model_lipschitz_bound

__all__ = [
    "distance_layers",
    "set_p",
    "schedule_ratio",
    "scheduled_p",
    "LpScheduler",
    "worst_case_margins",
    "LInfDistHinge",
    "ClippedHingeCrossEntropy",
    "HybridIntervalCrossEntropy",
    "interval_bounds",
    "ibp_margins",
    "certify_ibp",
    "linf_lipschitz_bound",
    "certify_lipschitz",
    "evaluate_linf_robustness",
]


def _batches(n, batch_size):
    return [(start, min(start + batch_size, n)) for start in range(0, n, batch_size)]


def _check_labels(y, n):
    y = np.asarray(y)
    if y.ndim == 2 and y.shape[1] > 1:
        y = np.argmax(y, axis=1)
    y = y.reshape(-1).astype("int64")
    if y.shape[0] != n:
        raise ValueError(f"y must hold one label per sample ({n}), got shape {y.shape}.")
    return y


def ibp_margins(
    model: keras.Model,
    x: ArrayLike,
    y: ArrayLike,
    eps: float,
    clip_min: float = 0.0,
    clip_max: float = 1.0,
    batch_size: int = 256,
) -> np.ndarray:
    """Upper bounds of z_j - z_t over the eps l_inf-ball around each x, clipped to [clip_min, clip_max].

    Args:
        model: a Sequential or chain-shaped functional Keras model (see
            `interval_bounds`), evaluated in inference mode.
        x: inputs (N, ...).
        y: class indices (N,) or one-hot (N, C).
        eps: l_inf radius in input units (>= 0).
        clip_min: valid input range (None: unbounded); every x must lie in it.
        clip_max: valid input range (None: unbounded); every x must lie in it.
        batch_size: samples per propagation.

    Returns:
        numpy array (N, C): entry t is 0, the point is certified iff all others are < 0. Each entry is
        the larger of the propagated bound and the model's own z_j - z_t at x (a rounding can put the
        bound below the computed value). Through a last linear Dense layer the bound also covers the
        rounding of that layer's evaluation in any summation order and of the bound's own (a margin
        of a few roundings is not certified: another batch size can sum in another order and flip
        it). The box is propagated in float64 for a float64 model; the rounding of the layers before
        the last one is not modelled (as for `certify`).

    Raises:
        ValueError: x outside [clip_min, clip_max], a model with one output or one
            `deel_lip_ext._certifiable.check_certifiable` refuses (half precision, ...).
    """
    eps = check_number(eps, "eps", minimum=0)
    check_certifiable(model, "ibp_margins")
    layers = chain_layers(model)
    x = np.asarray(x, dtype=box_dtype(layers))
    y = _check_labels(y, len(x))
    check_inside_box(x, clip_min, clip_max)  # the clipped box of such a point bounds the model elsewhere
    low_clip = -np.inf if clip_min is None else clip_min
    high_clip = np.inf if clip_max is None else clip_max
    num_classes = model.output_shape[-1]
    if num_classes < 2:
        raise ValueError(
            f"ibp_margins needs C >= 2 logits, model {model.name!r} has one output: certify a binary single-logit "
            "model with certify_lipschitz or deel_lip_ext.certification.certify."
        )
    if np.any(y >= num_classes) or np.any(y < 0):
        raise ValueError(f"y must hold class indices in [0, {num_classes}), got values up to {np.max(y)}.")
    forward = compiled_inference(model)  # certify's compiled forward, one per model
    results = []
    for start, stop in _batches(len(x), batch_size):
        batch = x[start:stop]
        lower = np.clip(batch - eps, low_clip, high_clip)
        upper = np.clip(batch + eps, low_clip, high_clip)
        is_target = np.eye(num_classes, dtype=bool)[y[start:stop]]
        logits = run_padded(forward, batch, batch_size)
        unit_roundoff = float(np.finfo(logits.dtype).eps) / 2  # the realized dtype (float32 for JAX without x64)
        bounds = ops.convert_to_numpy(elided_margins(layers, lower, upper, is_target, unit_roundoff))
        results.append(np.maximum(bounds, _computed_differences(logits, is_target)))
    return np.concatenate(results, axis=0)


def _computed_differences(logits, is_target):
    """z_j - z_t of the model's own inference-mode `logits` (entry t is 0), in float64.

    The ball's supremum is at least this value. The propagated bound, computed in another order
    ((W_j - W_t) h rather than W_j h - W_t h), can fall a rounding below it: without this floor a
    point the model misclassifies by one unit in the last place, or a tie, was certified.
    """
    logits = np.asarray(logits, dtype=np.float64)
    target = np.sum(np.where(is_target, logits, 0.0), axis=1, keepdims=True)
    return np.where(is_target, 0.0, logits - target)


def certify_ibp(
    model: keras.Model,
    x: ArrayLike,
    y: ArrayLike,
    eps: float,
    clip_min: float = 0.0,
    clip_max: float = 1.0,
    batch_size: int = 256,
) -> np.ndarray:
    """Boolean array: True where IBP proves every point of the clipped eps-ball is classified as y.

    The papers' "certified accuracy" is its mean (at p = inf, see `set_p`).

    Args:
        model: as in `ibp_margins` (C >= 2 logits).
        x: as in `ibp_margins`.
        y: as in `ibp_margins`.
        eps: as in `ibp_margins`.
        clip_min: as in `ibp_margins`.
        clip_max: as in `ibp_margins`.
        batch_size: as in `ibp_margins`.

    Returns:
        numpy boolean array (N,).

    Examples:
        >>> set_p(model, float("inf"))
        >>> certified_accuracy = certify_ibp(model, x_test, y_test, eps=0.3).mean()
    """
    margins = ibp_margins(model, x, y, eps, clip_min, clip_max, batch_size)
    y = _check_labels(y, len(margins))
    others = np.where(np.eye(margins.shape[1], dtype=bool)[y], -np.inf, margins)
    return np.all(others < 0, axis=1)


def linf_lipschitz_bound(model: keras.Model | keras.layers.Layer | list) -> float:
    """Upper bound of the l_inf -> l_inf Lipschitz constant of a model, a layer or a chain (list) of layers.

    A model's bound walks its real graph (`deel_lip_ext.utils.model_lipschitz_bound(model, "linf")`:
    merges, ops, shared layers and nested models included); each layer answers through the Lipschitz
    protocol: 1 per l_inf-dist layer at p = inf, the largest absolute column sum of a Dense kernel,
    max |scale| for `Rescaling` (a model starting with `Rescaling(1 / std)` gets 1 / std).

    Args:
        model: a Keras model, a layer, or a list (or tuple) of layers applied in order (their bounds multiply).

    Returns:
        The bound, a float.

    Raises:
        ValueError: for a layer or op whose l_inf constant is unknown (or an l_inf-dist layer at finite p).

    Examples:
        >>> set_p(model, float("inf"))
        >>> linf_lipschitz_bound(model)  # 1 / std for a Rescaling(1 / std) then l_inf-dist layers
    """
    if isinstance(model, keras.Model):
        return model_lipschitz_bound(model, "linf")
    bound = 1.0
    for layer in model if isinstance(model, (list, tuple)) else [model]:
        bound *= layer_lipschitz_constant(layer, "linf")
    return bound


def certify_lipschitz(
    model: keras.Model, x: ArrayLike, y: ArrayLike, eps: float, lip_const: float | None = None, batch_size: int = 256
) -> np.ndarray:
    """Boolean array: True where margin / (2 L) > eps (the Lipschitz rule, L from `linf_lipschitz_bound`).

    Args:
        model: a Keras classifier returning logits (N, C); C == 1 is binary.
        x: inputs (N, ...).
        y: class indices (N,) or one-hot (N, C).
        eps: l_inf radius in input units (>= 0).
        lip_const: l_inf -> l_inf Lipschitz constant L of the model; None: `linf_lipschitz_bound(model)`.
        batch_size: batch size of `model.predict`.

    Returns:
        numpy boolean array (N,).

    Examples:
        >>> certified = certify_lipschitz(model, x_test, y_test, eps=0.3)
    """
    eps = check_number(eps, "eps", minimum=0)
    check_certifiable(model, "certify_lipschitz")
    lip_const = linf_lipschitz_bound(model) if lip_const is None else lip_const
    logits = model.predict(np.asarray(x, dtype="float32"), batch_size=batch_size, verbose=0)
    radius = certified_radius(logits, _check_labels(y, len(logits)), norm="linf", lip_const=lip_const)
    return radius > eps


def evaluate_linf_robustness(
    model: keras.Model,
    x: ArrayLike,
    y: ArrayLike,
    eps: float,
    pgd_steps: int = 100,
    pgd_restarts: int = 1,
    clip_min: float = 0.0,
    clip_max: float = 1.0,
    batch_size: int = 256,
    seed: int = 0,
) -> dict[str, float]:
    """Clean, PGD and certified (IBP and Lipschitz rule) accuracy at l_inf radius eps, as fractions.

    Every l_inf-dist layer must be at p = inf (certificates hold only there).

    Args:
        model: a Sequential or chain-shaped functional Keras classifier with C >= 2 logits (see `ibp_margins`).
        x: inputs (N, ...), inside [clip_min, clip_max].
        y: class indices (N,) or one-hot (N, C).
        eps: l_inf radius in input units (>= 0).
        pgd_steps: steps of the l_inf PGD attack (cross-entropy loss, `deel_lip_ext.attacks.pgd`).
        pgd_restarts: random restarts of the attack.
        clip_min: valid input range (None: unbounded), for the attack and the IBP boxes.
        clip_max: valid input range (None: unbounded), for the attack and the IBP boxes.
        batch_size: samples per batch (predictions, attack and propagation).
        seed: seed of the attack's random starts.

    Returns:
        dict with "clean", "pgd", "certified" (IBP, the papers' figure) and
        "certified_lipschitz".

    Examples:
        >>> scores = evaluate_linf_robustness(model, x_test, y_test, eps=0.3, pgd_steps=100)
    """
    y = _check_labels(y, len(x))
    lip_const = linf_lipschitz_bound(model)
    predictions = np.argmax(model.predict(x, batch_size=batch_size, verbose=0), axis=1)
    adversarial = pgd(
        model,
        x,
        y,
        eps,
        norm="linf",
        steps=pgd_steps,
        restarts=pgd_restarts,
        loss="ce",
        clip_min=clip_min,
        clip_max=clip_max,
        batch_size=batch_size,
        seed=seed,
    )
    adversarial_predictions = np.argmax(model.predict(adversarial, batch_size=batch_size, verbose=0), axis=1)
    return {
        "clean": float(np.mean(predictions == y)),
        "pgd": float(np.mean((adversarial_predictions == y) & (predictions == y))),
        "certified": float(np.mean(certify_ibp(model, x, y, eps, clip_min, clip_max, batch_size))),
        "certified_lipschitz": float(np.mean(certify_lipschitz(model, x, y, eps, lip_const, batch_size))),
    }
