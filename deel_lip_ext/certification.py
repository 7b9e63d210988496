r"""Certified robustness of Lipschitz classifiers: radii, one-call certification, bounds.

A classifier f whose logit map is L-Lipschitz cannot change its decision on x under any perturbation smaller than
the *certified radius*:

* multi-class, L2 (the whole logit map L-Lipschitz): r = M / (sqrt(2) L), with
  $M = f_y - \max_{j \ne y} f_j$, because f_y - f_j = (e_y - e_j)^T f and ||e_y - e_j|| = sqrt(2);
* multi-class when every logit is *separately* L-Lipschitz (deel-lip's `disjoint_neurons=True`, e.g. a last
  `FrobeniusDense`): r = M / (2 L);
* l_inf (each logit L-Lipschitz for the l_inf input norm, as in l_inf-dist nets): r = M / (2 L);
* binary, single logit: r = s f / L with s = +1 for the positive class.

Misclassified points (M <= 0, ties included) get radius 0, and a point is certified at epsilon iff r > epsilon
(strict, as in the BCOP paper).

`certify` computes L instead of assuming it (the product of exact per-layer operator norms of the exported model,
`deel_lip_ext.utils.model_lipschitz_bound`), so that a model with a layer of unknown constant is refused rather than
given a false certificate (deel-torchlip issue #15).
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Iterable, Sequence
from typing import Any

import keras
import numpy as np
from keras import ops
from numpy.typing import ArrayLike

from deel_lip_ext import _autodiff as autodiff
from deel_lip_ext._certifiable import check_certifiable, float32_copy
from deel_lip_ext._optional import optional_import
from deel_lip_ext._validation import NORMS, check_int, check_labels, check_norm, check_number
from deel_lip_ext.utils import evaluate_lip_const, model_lipschitz_bound

__all__ = [
    "NORMS",
    "logit_margin",
    "certificate_factor",
    "certified_radius",
    "certify",
    "CertifyResult",
    "lipschitz_bounds",
    "float32_copy",
]


# Progress bars appear from this many batches on.
_PROGBAR_MIN_BATCHES = 4


def squeezed_labels(y_true: Any, num_classes: int) -> Any:
    """`y_true` (a tensor) without a trailing axis of size 1, checked to have shape (N,) or (N, num_classes)."""
    if len(y_true.shape) == 2 and y_true.shape[-1] == 1:
        y_true = ops.squeeze(y_true, axis=-1)
    if len(y_true.shape) not in (1, 2) or (len(y_true.shape) == 2 and y_true.shape[-1] != num_classes):
        raise ValueError(
            f"y_true must have shape (N,), (N, 1) or (N, {num_classes}) for logits of {num_classes} classes, "
            f"got shape {tuple(y_true.shape)}."
        )
    return y_true


def logit_margin(y_true: ArrayLike, y_pred: ArrayLike) -> Any:
    r"""Signed logit margin of each sample (`keras.ops`, differentiable in `y_pred`).

    Multi-class (C > 1): $f_y - \max_{j \ne y} f_j$, where the target is the
    positive entry of a one-hot (or +-1) `y_true` of shape (N, C), or the class
    index when `y_true` has shape (N,) or (N, 1). Binary (C == 1): s * f with
    s = +1 if y > 0 else -1. Positive iff the sample is correctly classified.

    Args:
        y_true: labels, see above.
        y_pred: logits of shape (N, C).

    Returns:
        A tensor of shape (N,).

    Examples:
        >>> logit_margin(np.array([1, 0]), np.array([[0.0, 2.0], [3.0, 1.0]]))  # [2., 2.]
    """
    y_pred = ops.convert_to_tensor(y_pred)
    if len(y_pred.shape) != 2:
        raise ValueError(f"y_pred (logits) must have shape (N, C), got shape {tuple(y_pred.shape)}.")
    num_classes = y_pred.shape[-1]
    y_true = squeezed_labels(ops.convert_to_tensor(y_true), num_classes)
    if num_classes == 1:
        sign = ops.where(ops.greater(ops.reshape(y_true, (-1,)), 0), 1.0, -1.0)
        return ops.cast(sign, y_pred.dtype) * y_pred[:, 0]
    if len(y_true.shape) == 1:
        is_target = ops.one_hot(ops.cast(y_true, "int32"), num_classes) > 0
    else:
        is_target = ops.greater(y_true, 0)
    target_logit = ops.sum(ops.where(is_target, y_pred, ops.zeros_like(y_pred)), axis=-1)
    best_other = ops.max(ops.where(is_target, ops.full_like(y_pred, -np.inf), y_pred), axis=-1)
    return target_logit - best_other


def certificate_factor(norm: str = "l2", disjoint_neurons: bool = False, num_classes: int = 2):
    """The c of r = M / (c L): 1 for a single logit, 2 for l_inf or disjoint neurons, else sqrt(2).

    Args:
        norm: "l2" or "linf", the norm of the perturbation (and of the Lipschitz constant L).
        disjoint_neurons: each logit is computed by its own L-Lipschitz neuron (z_i - z_j is then
            2L-Lipschitz rather than sqrt(2) L in L2).
        num_classes: number of logits C (1: a single binary logit, whose margin is |z|).

    Examples:
        >>> certificate_factor("l2", num_classes=10)
        1.4142135623730951
    """
    check_norm(norm)
    if num_classes == 1:
        return 1.0
    if norm == "linf" or disjoint_neurons:
        return 2.0
    return math.sqrt(2.0)


def _radius_from_margin(margin, norm, lip_const, disjoint_neurons, num_classes):
    factor = certificate_factor(norm, disjoint_neurons, num_classes)
    return ops.relu(margin) / (factor * lip_const)


def certified_radius(
    logits: ArrayLike, labels: ArrayLike, norm: str = "l2", lip_const: float = 1.0, disjoint_neurons: bool = False
) -> np.ndarray:
    """Certified radius of each sample (0 when misclassified or tied).

    Args:
        logits: array (N, C) of logits; C == 1 is a binary single-logit model.
        labels: class indices (N,) / (N, 1) or one-hot (N, C) in {0,1} or {-1,1};
            for C == 1, labels in {0, 1} or {-1, 1}.
        norm: "l2" or "linf": the norm of the perturbation, and the norm for
            which `lip_const` is the Lipschitz constant.
        lip_const: Lipschitz constant L of the logit map (> 0).
        disjoint_neurons: True when only each logit separately is known to be
            L-Lipschitz (then c = 2 in L2 as well).

    Returns:
        numpy array (N,): M/(sqrt(2) L) (l2), M/(2 L) (l2 disjoint, linf), or
        s f / L (single logit), floored at 0; 0 for a sample with a non-finite (overflowed) logit.

    Examples:
        >>> certified_radius([[3.0, 1.0]], [0])  # sqrt(2) = 2 / sqrt(2)
    """
    check_norm(norm)
    lip_const = check_number(lip_const, "lip_const", minimum=0, strict=True)
    logits = np.asarray(logits, dtype="float64")  # the logits' own precision: a float64 model keeps its margins
    if logits.size == 0:
        raise ValueError(f"logits is empty (shape {logits.shape}): certified_radius needs at least one sample.")
    target = check_labels(logits, labels)
    margin = logit_margin(target, logits)
    radius = _radius_from_margin(margin, norm, lip_const, disjoint_neurons, logits.shape[1])
    radius = np.asarray(ops.convert_to_numpy(radius))
    # An overflowed (inf) or NaN logit has no margin: that point is not certified.
    return np.where(np.all(np.isfinite(logits), axis=1), radius, 0.0)


def radius_conversion(norm: str, lip_norm: str, input_dim: int):
    """Factor turning a certificate proved for `lip_norm` into one for `norm`.

    Returns `(certificate_norm, factor)`: radii computed with
    `certified_radius(norm=certificate_norm)` are multiplied by `factor`.
    An L2 bound certifies l_inf balls of radius r_2 / sqrt(d), since
    ||d||_2 <= sqrt(d) ||d||_inf; an l_inf bound certifies L2 balls of the same
    radius, since ||d||_inf <= ||d||_2.
    """
    check_norm(norm)
    check_norm(lip_norm, "lip_norm")
    if lip_norm == norm:
        return norm, 1.0
    if lip_norm == "l2":
        return "l2", 1.0 / math.sqrt(input_dim)
    return "linf", 1.0


def _input_scale_factor(input_scale):
    """Radius factor from an input normalization (x - mean) / std: min(std)."""
    if input_scale is None:
        return 1.0
    scale = np.asarray(input_scale, dtype="float64")
    if scale.size == 0 or not np.all(np.isfinite(scale)) or np.any(scale <= 0):
        raise ValueError(f"input_scale must be a positive std (scalar or per channel), got {input_scale!r}.")
    return float(np.min(scale))


def resolve_lip_const(model, lip_const, norm="l2"):
    """`lip_const` if given (checked), else the computed `norm` bound of `model` (`model_lipschitz_bound`)."""
    if lip_const is not None:
        return check_number(lip_const, "lip_const", minimum=0, strict=True)
    return check_number(model_lipschitz_bound(model, norm), "the computed Lipschitz bound", minimum=0, strict=True)


def check_input_shape(model: keras.Model, x: np.ndarray) -> None:
    """Refuse samples of another shape than the model's input: its Lipschitz bound holds at that shape.

    (A `keras.Sequential` built for 3x3 images runs on 9x9 ones with a mere warning, with another Lipschitz
    constant.) Models without a known input shape (subclassed) are not checked.
    """
    try:
        inputs = model.inputs
    except (AttributeError, ValueError):
        return
    if not inputs or len(inputs) != 1:
        return
    expected, got = tuple(inputs[0].shape)[1:], tuple(x.shape)[1:]
    if len(got) != len(expected) or any(e is not None and e != g for e, g in zip(expected, got)):
        raise ValueError(
            f"data: samples of shape {got} do not match the input shape {expected} of model {model.name!r}, at "
            "which its Lipschitz bound holds: give data of that shape, or build the model for this size (None "
            "spatial dimensions for every size)."
        )


def iterate_batches(data: tuple[ArrayLike, ArrayLike], batch_size: int):
    """Yield numpy `(x, y)` batches from `(x, y)` arrays or an iterable of batches."""
    if isinstance(data, (tuple, list)) and len(data) == 2 and not _is_batch_pair_list(data):
        x, y = np.asarray(data[0]), np.asarray(data[1])
        if len(x) != len(y):
            raise ValueError(f"data: x and y must have the same length, got {len(x)} and {len(y)}.")
        for start in range(0, len(x), batch_size):
            yield x[start : start + batch_size], y[start : start + batch_size]
        return
    for batch in data:
        if not isinstance(batch, (tuple, list)) or len(batch) < 2:
            raise ValueError("data must be a tuple (x, y) of arrays or an iterable of (x, y) batches.")
        yield np.asarray(batch[0]), np.asarray(batch[1])


def _is_batch_pair_list(data):
    # A tuple is always (x, y), so that x given as a list of two samples is not read as two batches.
    return isinstance(data, list) and isinstance(data[0], (tuple, list)) and len(data[0]) == 2


def count_batches(data: tuple[ArrayLike, ArrayLike], batch_size: int):
    """Number of batches `iterate_batches` yields, or None when unknown."""
    if isinstance(data, (tuple, list)) and len(data) == 2 and not _is_batch_pair_list(data):
        return math.ceil(len(data[0]) / batch_size)
    try:
        return len(data)
    except TypeError:
        cardinality = getattr(data, "cardinality", None)
        if cardinality is not None:
            value = int(cardinality())
            return value if value >= 0 else None
        return None


def make_progbar(n_batches: int, verbose: bool | str):
    """A `keras.utils.Progbar` when asked for (verbose=True) or when the data is long."""
    if verbose == "auto":
        verbose = n_batches is None or n_batches >= _PROGBAR_MIN_BATCHES
    return keras.utils.Progbar(n_batches) if verbose else None


@dataclasses.dataclass
class CertifyResult:
    """What `certify` proved on a data set.

    Args:
        epsilons: the perturbation budgets (numpy array).
        certified_accuracy: fraction of points with radius > eps, per epsilon (numpy array).
        clean_accuracy: fraction of points with a positive margin.
        mean_radius: mean certified radius over all points (misclassified ones count 0).
        median_radius: median certified radius over all points (misclassified ones count 0).
        lip_const: the Lipschitz bound used.
        lip_const_source: where `lip_const` came from: "computed" or "user".
        norm: "l2" or "linf", the norm of the perturbations.
        n_samples: number of points.
        radii: certified radius of each point (numpy array (n_samples,), in input units).
    """

    epsilons: np.ndarray
    certified_accuracy: np.ndarray
    clean_accuracy: float
    mean_radius: float
    median_radius: float
    lip_const: float
    lip_const_source: str
    norm: str
    n_samples: int
    radii: np.ndarray = dataclasses.field(repr=False)

    def as_dict(self):
        """Plain-Python summary (no per-point radii)."""
        return {
            "norm": self.norm,
            "n_samples": self.n_samples,
            "lip_const": self.lip_const,
            "lip_const_source": self.lip_const_source,
            "clean_accuracy": self.clean_accuracy,
            "mean_radius": self.mean_radius,
            "median_radius": self.median_radius,
            "certified_accuracy": {float(e): float(a) for e, a in zip(self.epsilons, self.certified_accuracy)},
        }

    def __str__(self):
        lines = [
            f"Certification ({self.norm}, {self.n_samples} samples, Lipschitz bound {self.lip_const:.6g}, "
            f"{self.lip_const_source})",
            f"  clean accuracy  {self.clean_accuracy:7.2%}",
            f"  mean radius     {self.mean_radius:.4g}",
            f"  median radius   {self.median_radius:.4g}",
            "  epsilon     certified accuracy",
        ]
        lines += [f"  {eps:<10.4g}  {acc:7.2%}" for eps, acc in zip(self.epsilons, self.certified_accuracy)]
        return "\n".join(lines)

    def plot(self, path: str | os.PathLike, title: str | None = None):
        """Save a PNG of certified accuracy versus epsilon (curve over the radii) to `path`."""
        # A bare Figure on an Agg canvas: no pyplot state, the user's backend is left alone.
        figure = optional_import("matplotlib.figure", "CertifyResult.plot")
        canvas = optional_import("matplotlib.backends.backend_agg", "CertifyResult.plot")
        top = max(float(np.max(self.epsilons)) if self.epsilons.size else 0.0, float(np.max(self.radii, initial=0.0)))
        grid = np.linspace(0.0, top if top > 0 else 1.0, 200)
        curve = [np.mean(self.radii > eps) for eps in grid]
        fig = figure.Figure(figsize=(5, 3.5))
        canvas.FigureCanvasAgg(fig)
        ax = fig.add_subplot()
        ax.plot(grid, curve, label="certified accuracy")
        ax.scatter(self.epsilons, self.certified_accuracy, color="C1", zorder=3, label="requested epsilons")
        ax.set_xlabel(f"epsilon ({self.norm} radius, in input units)")
        ax.set_ylabel("certified accuracy")
        ax.set_ylim(0.0, 1.0)
        ax.grid(alpha=0.3)
        ax.legend()
        ax.set_title(title or f"L = {self.lip_const:.4g}, clean accuracy {self.clean_accuracy:.2%}")
        fig.tight_layout()
        fig.savefig(path, dpi=150)
        return path


def certify(
    model: keras.Model,
    data: tuple[ArrayLike, ArrayLike] | Iterable,
    epsilons: Sequence[float] | ArrayLike,
    norm: str = "l2",
    input_scale: float | None = None,
    batch_size: int = 256,
    lip_const: float | None = None,
    lip_norm: str = "l2",
    disjoint_neurons: bool = False,
    verbose: bool | str = "auto",
) -> CertifyResult:
    """Certified accuracy of `model` on `data` at several perturbation budgets.

    Args:
        model: a Keras classifier returning logits (N, C); C == 1 is binary.
        data: a tuple `(x, y)` of arrays, or an iterable (e.g. `tf.data.Dataset`)
            of `(x, y)` batches. Labels as in `certified_radius`.
        epsilons: a number or a list of perturbation budgets (>= 0), in the units
            of the raw input (before the normalization `input_scale` describes).
        norm: "l2" or "linf", the norm of the perturbations.
        input_scale: std of an input normalization (x - mean) / std that was applied to `data` before it reaches
            the model (scalar or per channel). A raw perturbation d becomes d / std, so radii are multiplied by
            min(std). None: no normalization.
        batch_size: batch size when `data` is a pair of arrays.
        lip_const: the Lipschitz constant to use. None (default): computed for `lip_norm` by
            `deel_lip_ext.utils.model_lipschitz_bound` (a walk of the model's graph with exact per-layer operator
            norms), which raises `ValueError` naming a layer or op whose constant is unknown.
        lip_norm: norm for which `lip_const` holds: "l2" (our layers, and the
            computed bound) or "linf" (l_inf-dist nets). An L2 bound certifies
            l_inf balls of radius r_2 / sqrt(d) (d = input size).
        disjoint_neurons: True when only each logit separately is L-Lipschitz.
        verbose: True, False or "auto" (a progress bar from 4 batches on).

    Returns:
        A `CertifyResult` (`print` it for a table, `.plot(path)` for a PNG).

    Raises:
        ValueError: a model a certificate would misread: several inputs, outputs
            in a list or dict, a single output through a probability activation
            (sigmoid, softplus, ...: certify the logit instead), layers computing
            in float16 / bfloat16 (their rounding can flip a decision inside the
            radius: certify `float32_copy(model)`); a model or op
            whose Lipschitz constant is unknown (see `lip_const`).

    Examples:
        >>> result = certify(model, (x_test, y_test), [36 / 255, 72 / 255, 108 / 255])
        >>> print(result)
        >>> result.plot("certified_accuracy.png")
    """
    check_norm(norm)
    check_norm(lip_norm, "lip_norm")
    batch_size = check_int(batch_size, "batch_size")
    epsilons = np.atleast_1d(np.asarray(epsilons, dtype="float64"))
    if epsilons.ndim != 1 or epsilons.size == 0:
        raise ValueError(
            f"epsilons must be a number or a flat, non-empty list of numbers, got an array of shape {epsilons.shape}."
        )
    for eps in epsilons:
        check_number(float(eps), "epsilons", minimum=0)
    scale = _input_scale_factor(input_scale)
    check_certifiable(model, "certify")
    lip_source = "user" if lip_const is not None else "computed"
    lip_const = resolve_lip_const(model, lip_const, lip_norm)

    n_batches = count_batches(data, batch_size)
    progbar = make_progbar(n_batches, verbose)
    forward = autodiff.compiled_inference(model)
    logits, targets = [], []
    largest_batch = 0  # a shorter (last) batch is padded to it: one compiled shape for all
    for step, (x, y) in enumerate(iterate_batches(data, batch_size)):
        check_input_shape(model, x)
        largest_batch = max(largest_batch, len(x))
        logits.append(autodiff.run_padded(forward, x, largest_batch))
        targets.append(check_labels(logits[-1], y))  # each batch's labels checked against its own logits
        if progbar is not None:
            progbar.update(step + 1)
    if not logits:
        raise ValueError("data is empty: certify needs at least one sample.")
    # The margins of all batches at once: per batch, their small ops took 1/8 of a cached second call (W1).
    certificate_norm, factor = radius_conversion(norm, lip_norm, int(np.prod(x.shape[1:])))
    logits, targets = np.concatenate(logits), np.concatenate(targets)
    radii = certified_radius(logits, targets, certificate_norm, lip_const, disjoint_neurons) * factor * scale
    return CertifyResult(
        epsilons=epsilons,
        certified_accuracy=np.array([np.mean(radii > eps) for eps in epsilons]),
        clean_accuracy=float(np.mean(radii > 0)),
        mean_radius=float(np.mean(radii)),
        median_radius=float(np.median(radii)),
        lip_const=lip_const,
        lip_const_source=lip_source,
        norm=norm,
        n_samples=int(radii.size),
        radii=radii,
    )


def search_lipschitz_lower_bound(
    model: keras.Model,
    x: ArrayLike,
    steps: int = 50,
    step_size: float = 0.05,
    min_distance: float = 1e-2,
    seed: int = 0,
):
    """Gradient ascent on ||f(a) - f(b)|| / ||a - b|| over pairs started near `x` (any backend).

    Both points of each pair move; ||a - b|| is kept >= `min_distance` so that
    float32 rounding cannot inflate the ratio. Returns the best ratio seen.
    """
    x = np.asarray(x, dtype="float32")
    rng = np.random.default_rng(seed)
    axes = tuple(range(1, x.ndim))
    direction = rng.standard_normal(x.shape).astype("float32")
    direction /= np.sqrt(np.sum(direction**2, axis=axes, keepdims=True))
    a, b = x, x + 10 * min_distance * direction
    step = autodiff.compiled_pair_ratio_step(model)
    best = 0.0
    for _ in range(steps + 1):
        ratio, gradient = step(ops.convert_to_tensor(np.concatenate([a, b])))
        best = max(best, float(np.max(ops.convert_to_numpy(ratio))))
        gradient = ops.convert_to_numpy(gradient)
        gradient /= np.sqrt(np.sum(gradient**2, axis=axes, keepdims=True)) + 1e-12
        a, b = a + step_size * gradient[: len(a)], b + step_size * gradient[len(a) :]
        gap = b - a
        gap_norm = np.sqrt(np.sum(gap**2, axis=axes, keepdims=True))
        b = a + gap * np.maximum(1.0, min_distance / np.maximum(gap_norm, 1e-30))
    return best


def lipschitz_bounds(
    model: keras.Model,
    x: ArrayLike,
    steps: int = 50,
    step_size: float = 0.05,
    lip_const: float | None = None,
    seed: int = 0,
) -> tuple[float, float]:
    """Empirical lower bound and certified upper bound of the L2 Lipschitz constant.

    Args:
        model: a Keras model.
        x: sample inputs (N, ...) around which the lower bound is searched.
        steps: gradient-ascent budget of the pair search.
        step_size: gradient-ascent budget of the pair search.
        lip_const: upper bound to report instead of computing it.
        seed: seed of the pair search.

    Returns:
        `(lower, upper)`: lower = max(max Jacobian spectral norm over `x`, best
        ratio ||f(a) - f(b)|| / ||a - b|| found by gradient ascent); upper =
        `deel_lip_ext.utils.model_lipschitz_bound(model)` (product of exact
        per-layer norms). A correct model satisfies lower <= upper <= k.

    Examples:
        >>> lower, upper = lipschitz_bounds(model, x_test[:64])
    """
    upper = resolve_lip_const(model, lip_const)
    lower = max(
        evaluate_lip_const(model, x),
        search_lipschitz_lower_bound(model, x, steps=steps, step_size=step_size, seed=seed),
    )
    return lower, upper
