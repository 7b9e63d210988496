"""Training and certification of l_inf-dist nets (Zhang et al., ICML 2021; ICLR 2022).

* `LpScheduler`: the papers' norm-order schedule, p = 8, then geometric
  growth to 1000, then p = inf, updated every batch.
* Losses on the worst-case margins of the eps-ball: `LInfDistHinge` (v1),
  `ClippedHingeCrossEntropy` (v2: clipped hinge with threshold 2 eps plus a
  decaying cross-entropy on s * logits, s learnable) and
  `HybridIntervalCrossEntropy` (v1 "l_inf-dist Net + MLP": cross-entropy on
  interval-arithmetic margins of the MLP head).
* Certification: the Lipschitz rule (margin / 2 > L eps, through
  `deel_lip_ext.certification.certified_radius(norm="linf")`) and interval
  bound propagation (IBP) through l_inf-dist, Dense, monotone activation,
  rescaling and reshaping layers, with the last Dense layer elided; IBP is
  what the papers report as "certified".

Epsilons of the losses are in the units of the logits' Lipschitz bound, i.e.
of the inputs of the first l_inf-dist layer (pixel eps / std when the model
starts with a `Rescaling(1 / std)`). The certification functions take pixel
epsilons and models whose input is the pixel image.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence
from typing import Any

import keras
import numpy as np
from keras import ops
from numpy.typing import ArrayLike

from deel_lip_ext.certification import certified_radius
from deel_lip_ext.layers.linf import LogitScale, _LInfDistBase, check_p
from deel_lip_ext.lipschitz import is_non_decreasing_activation
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


# ---------------------------------------------------------------- norm order


def _sublayers(layer_or_model):
    """The layers of a model (recursively, in order) or [layer]."""
    inner = getattr(layer_or_model, "layers", None)
    if inner is None:
        return [layer_or_model]
    flat = []
    for layer in inner:
        flat.extend(_sublayers(layer))
    return flat


def distance_layers(model: keras.Model):
    """All l_inf-dist layers (`LInfDistDense`, `LInfDistConv2D`) of a model, nested models included."""
    return [layer for layer in _sublayers(model) if isinstance(layer, _LInfDistBase)]


def set_p(model: keras.Model, p: float):
    """Set the norm order of every l_inf-dist layer of `model` (p = inf for certification)."""
    p = check_p(p)
    layers = distance_layers(model)
    if not layers:
        raise ValueError(f"model {getattr(model, 'name', model)!r} has no l_inf-dist layer whose p could be set.")
    for layer in layers:
        layer.p = p


def _check_number(name, value, low=None, high=None, low_open=False):
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value!r}.")
    if low is not None and (value < low or (low_open and value == low)):
        raise ValueError(f"{name} must be {'>' if low_open else '>='} {low}, got {value!r}.")
    if high is not None and value > high:
        raise ValueError(f"{name} must be <= {high}, got {value!r}.")
    return float(value)


def schedule_ratio(step: int, steps_per_epoch: int, constant_epochs: float, growth_epochs: float):
    """r in [0, 1]: 0 during the constant phase, then linear in the step over the growth phase."""
    growth_steps = max(growth_epochs * steps_per_epoch, 1e-12)
    return float(np.clip((step - constant_epochs * steps_per_epoch) / growth_steps, 0.0, 1.0))


def scheduled_p(ratio: float, p_start: float = 8.0, p_end: float = 1000.0, inf_threshold: float = 100.0):
    """p = p_start (p_end / p_start) ** r, and inf once r = 1 when p_end >= inf_threshold (the papers' rule)."""
    if ratio >= 1.0 and p_end >= inf_threshold:
        return math.inf
    return float(p_start * (p_end / p_start) ** ratio)


@keras.saving.register_keras_serializable(package="deel_lip_ext")
class LpScheduler(keras.callbacks.Callback):
    """Set p of every l_inf-dist layer before each batch: constant, geometric growth, then inf.

    With r = clip((step - constant_epochs * steps_per_epoch) /
    (growth_epochs * steps_per_epoch), 0, 1), p = p_start (p_end / p_start)
    ** r, and p = inf once r reaches 1 (if p_end >= inf_threshold). v2 MNIST:
    constant 25, growth 375 epochs, then 50 epochs at p = inf.

    Args:
        p_start: p of the first phase (8).
        p_end: p reached at the end of the growth (1000).
        constant_epochs: length of the first phase, in epochs (may be fractional).
        growth_epochs: length of the growth phase, in epochs (> 0).
        steps_per_epoch: batches per epoch; None takes it from `fit`.
        inf_threshold: switch to p = inf after the growth only if p_end >= it.
        followers: objects with `set_progress(ratio)` that follow the same r
            (e.g. `ClippedHingeCrossEntropy`, whose cross-entropy weight decays).
        initial_epoch: the epoch to start from when resuming.

    Examples:
        >>> loss = ClippedHingeCrossEntropy(eps=1.46)
        >>> scheduler = LpScheduler(8, 1000, constant_epochs=25, growth_epochs=375, followers=[loss])
        >>> model.fit(x, y, epochs=450, batch_size=512, callbacks=[scheduler])
    """

    def __init__(
        self,
        p_start: float = 8.0,
        p_end: float = 1000.0,
        constant_epochs: float = 0.0,
        growth_epochs: float = 1.0,
        steps_per_epoch: int | None = None,
        inf_threshold: float = 100.0,
        followers: Sequence[Any] = (),
        initial_epoch: int = 0,
    ) -> None:
        super().__init__()
        self.p_start = check_p(p_start)
        self.p_end = check_p(p_end)
        if math.isinf(self.p_start) or math.isinf(self.p_end):
            raise ValueError(
                f"p_start and p_end must be finite (p = inf comes after the growth), got {p_start!r}, {p_end!r}."
            )
        self.constant_epochs = _check_number("constant_epochs", constant_epochs, low=0)
        self.growth_epochs = _check_number("growth_epochs", growth_epochs, low=0, low_open=True)
        if steps_per_epoch is not None and (
            isinstance(steps_per_epoch, bool)
            or not isinstance(steps_per_epoch, numbers.Integral)
            or steps_per_epoch < 1
        ):
            raise ValueError(f"steps_per_epoch must be None or a positive integer, got {steps_per_epoch!r}.")
        self.steps_per_epoch = steps_per_epoch
        self.inf_threshold = _check_number("inf_threshold", inf_threshold, low=1)
        for follower in followers:
            if not callable(getattr(follower, "set_progress", None)):
                raise TypeError(f"every follower needs a set_progress(ratio) method, got {follower!r}.")
        self.followers = list(followers)
        self._epoch = int(initial_epoch)
        self.p = self.p_start

    def ratio_at(self, step: int):
        """The schedule ratio r at a global training step."""
        return schedule_ratio(step, self._steps_per_epoch(), self.constant_epochs, self.growth_epochs)

    def p_at(self, step: int):
        """The norm order at a global training step."""
        return scheduled_p(self.ratio_at(step), self.p_start, self.p_end, self.inf_threshold)

    def _steps_per_epoch(self):
        steps = self.steps_per_epoch or (self.params or {}).get("steps")
        if not steps:
            raise ValueError("LpScheduler needs steps_per_epoch: fit did not report it (pass steps_per_epoch=...).")
        return steps

    def on_epoch_begin(self, epoch: int, logs: dict | None = None):
        self._epoch = epoch

    def on_train_batch_begin(self, batch: int, logs: dict | None = None):
        step = self._epoch * self._steps_per_epoch() + batch
        ratio = self.ratio_at(step)
        self.p = scheduled_p(ratio, self.p_start, self.p_end, self.inf_threshold)
        set_p(self.model, self.p)
        for follower in self.followers:
            follower.set_progress(ratio)

    def on_epoch_end(self, epoch: int, logs: dict | None = None):
        if logs is not None:
            logs["p"] = self.p

    def get_config(self) -> dict:
        return {
            "p_start": self.p_start,
            "p_end": self.p_end,
            "constant_epochs": self.constant_epochs,
            "growth_epochs": self.growth_epochs,
            "steps_per_epoch": self.steps_per_epoch,
            "inf_threshold": self.inf_threshold,
            "initial_epoch": self._epoch,
        }


# ---------------------------------------------------------------- losses


def _target_mask(y_true, y_pred):
    """Boolean (N, C) mask of the true class from indices (N,) / (N, 1) or one-hot (N, C) labels.

    The shapes are checked at trace time against the predictions (N, C): any
    other label shape is a `ValueError`, never a broadcast.
    """
    y_true = ops.convert_to_tensor(y_true)
    batch, num_classes = y_pred.shape[0], y_pred.shape[-1]
    rank, last = len(y_true.shape), (y_true.shape[-1] if len(y_true.shape) else None)
    one_hot = rank == 2 and last == num_classes and num_classes > 1
    if not (one_hot or rank == 1 or (rank == 2 and last == 1)) or (
        batch is not None and y_true.shape[0] is not None and y_true.shape[0] != batch
    ):
        raise ValueError(
            f"l_inf-dist losses take labels of class indices (N,) or (N, 1), or one-hot labels (N, {num_classes}), "
            f"for predictions of shape {tuple(y_pred.shape)}; got labels of shape {tuple(y_true.shape)}."
        )
    if one_hot:
        return ops.greater(y_true, 0)
    return ops.one_hot(ops.cast(ops.reshape(y_true, (-1,)), "int32"), num_classes) > 0.5


def worst_case_margins(y_true: ArrayLike, y_pred: ArrayLike, eps: float):
    """m_j = (g_j + eps) - (g_t - eps) for j != t and m_t = 0: logits of an l_inf-1-Lipschitz net in the eps-ball.

    A sample is robust at eps when every m_j < 0, i.e. margin / 2 > eps.

    Examples:
        >>> worst_case_margins(np.array([0]), np.array([[3.0, 1.0]]), 0.5)  # [[0, -1]]
    """
    y_pred = ops.convert_to_tensor(y_pred)
    is_target = _target_mask(y_true, y_pred)
    target_logit = ops.sum(ops.where(is_target, y_pred, 0.0), axis=-1, keepdims=True)
    return ops.where(is_target, 0.0, y_pred - target_logit + 2.0 * eps)


def _cross_entropy(y_true, logits):
    """Softmax cross-entropy per sample, from the target mask."""
    is_target = _target_mask(y_true, logits)
    target_logit = ops.sum(ops.where(is_target, logits, 0.0), axis=-1)
    return ops.logsumexp(logits, axis=-1) - target_logit


class _EpsLoss(keras.losses.Loss):
    """A loss with its eps in a non-trainable variable, so that `LossParamScheduler("eps", ...)` can ramp it."""

    def __init__(self, eps, name, reduction="sum_over_batch_size"):
        super().__init__(name=name, reduction=reduction)
        self.eps = keras.Variable(_check_number("eps", eps, low=0), dtype="float32", trainable=False, name="eps")

    def _eps(self, dtype):
        return ops.cast(self.eps, dtype)

    def get_config(self):
        config = super().get_config()
        config["eps"] = float(ops.convert_to_numpy(self.eps))
        return config


@keras.saving.register_keras_serializable(package="deel_lip_ext")
class LInfDistHinge(_EpsLoss):
    """v1 l_inf-dist Net loss: hinge on the worst-case margins, threshold 2 eps.

    Per sample: mix * max_j relu(m_j) + (1 - mix) * mean_j relu(m_j), with
    m = `worst_case_margins(y, logits, eps)` (the mean runs over all C
    entries, including m_t = 0, as in the v1 code).

    Args:
        eps: training radius in logit-Lipschitz units (v1 MNIST: 0.45 / 0.3081).
        mix: weight of the max term (0.75 for MNIST and CIFAR, 1 for FMNIST).

    Examples:
        >>> model.compile(optimizer="adam", loss=LInfDistHinge(eps=0.45 / 0.3081))
    """

    def __init__(
        self, eps: float, mix: float = 0.75, name: str = "linf_dist_hinge", reduction: str = "sum_over_batch_size"
    ) -> None:
        super().__init__(eps, name=name, reduction=reduction)
        self.mix = _check_number("mix", mix, low=0, high=1)

    def call(self, y_true: ArrayLike, y_pred: ArrayLike):
        violations = ops.relu(worst_case_margins(y_true, y_pred, self._eps(y_pred.dtype)))
        return self.mix * ops.max(violations, axis=-1) + (1.0 - self.mix) * ops.mean(violations, axis=-1)

    def get_config(self) -> dict:
        config = super().get_config()
        config["mix"] = self.mix
        return config


@keras.saving.register_keras_serializable(package="deel_lip_ext")
class ClippedHingeCrossEntropy(_EpsLoss):
    """v2 l_inf-dist Net loss: clip(max_j m_j / (2 eps), 0, 1) + lambda * CE(s * logits, y).

    The first term is the hinge with threshold 2 eps, normalized and clipped
    at 1, so misclassified points learn only from the cross-entropy. lambda
    decays geometrically from `ce_weight_start` to `ce_weight_end` along the
    p-schedule ratio r (`set_progress`, called by `LpScheduler(followers=[loss])`).
    s is `logit_scale.scale` of a `LogitScale` layer of the model (1 if None).

    Args:
        eps: training radius in logit-Lipschitz units (v2 MNIST 0.3: 0.45 / 0.3081).
        ce_weight_start: cross-entropy weight lambda at r = 0 (MNIST: 0.05).
        ce_weight_end: cross-entropy weight lambda at r = 1 (MNIST: 2e-4).
        logit_scale: the model's `LogitScale` layer, or None.

    Examples:
        >>> model = linf_dist_net(5, 128, logit_scale=True)
        >>> loss = ClippedHingeCrossEntropy(1.46, logit_scale=model.layers[-1])
        >>> model.compile(optimizer="adam", loss=loss)
    """

    def __init__(
        self,
        eps: float,
        ce_weight_start: float = 0.05,
        ce_weight_end: float = 2e-4,
        logit_scale: keras.layers.Layer | None = None,
        name: str = "clipped_hinge_cross_entropy",
        reduction: str = "sum_over_batch_size",
    ) -> None:
        super().__init__(eps, name=name, reduction=reduction)
        if _check_number("eps", eps) == 0:
            raise ValueError("eps must be > 0: the hinge is normalized by 2 eps.")
        self.ce_weight_start = _check_number("ce_weight_start", ce_weight_start, low=0, low_open=True)
        self.ce_weight_end = _check_number("ce_weight_end", ce_weight_end, low=0, low_open=True)
        if logit_scale is not None and not isinstance(logit_scale, LogitScale):
            raise TypeError(f"logit_scale must be a LogitScale layer or None, got {logit_scale!r}.")
        self.logit_scale = logit_scale
        self.ce_weight = keras.Variable(self.ce_weight_start, dtype="float32", trainable=False, name="ce_weight")

    def set_progress(self, ratio: float):
        """lambda = start * (end / start) ** ratio, ratio in [0, 1]."""
        ratio = float(np.clip(ratio, 0.0, 1.0))
        self.ce_weight.assign(self.ce_weight_start * (self.ce_weight_end / self.ce_weight_start) ** ratio)

    def call(self, y_true: ArrayLike, y_pred: ArrayLike):
        eps = self._eps(y_pred.dtype)
        hinge = ops.clip(ops.max(worst_case_margins(y_true, y_pred, eps), axis=-1) / (2.0 * eps), 0.0, 1.0)
        scale = 1.0 if self.logit_scale is None else ops.cast(self.logit_scale.scale, y_pred.dtype)
        return hinge + ops.cast(self.ce_weight, y_pred.dtype) * _cross_entropy(y_true, scale * y_pred)

    def get_config(self) -> dict:
        config = super().get_config()
        config.update({"ce_weight_start": self.ce_weight_start, "ce_weight_end": self.ce_weight_end})
        return config


@keras.saving.register_keras_serializable(package="deel_lip_ext")
class HybridIntervalCrossEntropy(_EpsLoss):
    """v1 "l_inf-dist Net + MLP" loss: kappa * CE(interval margins) + (1 - kappa) * CE(logits).

    `y_pred` are the features of the l_inf-dist part. The feature extractor
    is 1-Lipschitz in l_inf, so the features of the eps-ball lie in
    [f - eps, f + eps]; the head is bounded by interval arithmetic on that box
    with the last Dense layer elided (upper bounds of z_j - z_t directly).
    Train a model that outputs the logits and the features
    (`deel_lip_ext.zoo.hybrid_training_model(model)`) with this loss on the
    features only.

    Args:
        head: the head's layers (a list) or a model: Dense, monotone
            activations ..., ending with a linear Dense.
        eps: training radius in feature units (v1 MNIST: 0.35 / 0.3081).
        kappa: weight of the worst-case term (0.5 for MNIST/FMNIST, 1 for CIFAR).

    Examples:
        >>> model = zoo.linf_dist_net_mlp(4, 128)
        >>> train_model = zoo.hybrid_training_model(model)
        >>> loss = HybridIntervalCrossEntropy(zoo.hybrid_head(model), eps=0.35 / 0.3081)
        >>> train_model.compile("adam", loss={"features": loss, "logits": None})
    """

    def __init__(
        self,
        head: keras.Model,
        eps: float,
        kappa: float = 0.5,
        name: str = "hybrid_interval_cross_entropy",
        reduction: str = "sum_over_batch_size",
    ) -> None:
        super().__init__(eps, name=name, reduction=reduction)
        self.head = (
            _sublayers(head)
            if not isinstance(head, (list, tuple))
            else [leaf for layer in head for leaf in _sublayers(layer)]
        )
        if not self.head or not isinstance(self.head[-1], keras.layers.Dense):
            raise ValueError("head must end with a keras.layers.Dense layer (its weights give the elided margins).")
        self.kappa = _check_number("kappa", kappa, low=0, high=1)

    def call(self, y_true: ArrayLike, y_pred: ArrayLike):
        logits = y_pred
        for layer in self.head:
            logits = layer(logits)
        eps = self._eps(y_pred.dtype)
        margins = _elided_margins(self.head, y_pred - eps, y_pred + eps, _target_mask(y_true, logits))
        return self.kappa * _cross_entropy(y_true, margins) + (1.0 - self.kappa) * _cross_entropy(y_true, logits)

    def get_config(self) -> dict:
        config = super().get_config()
        config["kappa"] = self.kappa
        return config


# ---------------------------------------------------------------- interval bounds

_SHAPE_LAYERS = (keras.layers.InputLayer, keras.layers.Flatten, keras.layers.Reshape, keras.layers.Dropout)


def _is_linear(activation):
    return activation is None or activation is keras.activations.linear


def _check_monotone(activation, layer):
    """Elementwise non-decreasing activations (known by identity in `deel_lip_ext.lipschitz.ACTIVATIONS`) only."""
    if not is_non_decreasing_activation(activation):
        raise TypeError(
            f"layer {layer.name!r}: interval bounds need a non-decreasing `keras.activations` function "
            f"(relu, tanh, sigmoid, ...), got {getattr(activation, '__name__', activation)!r}."
        )


def _is_monotone_relu(layer):
    return isinstance(layer, keras.layers.ReLU) and layer.negative_slope >= 0


def _dense_bounds(layer, lower, upper):
    """Centre/radius form: W c + b +- |W| r, then the (monotone) activation."""
    centre, radius = (upper + lower) / 2.0, (upper - lower) / 2.0
    kernel = ops.cast(layer.kernel, centre.dtype)
    mid = ops.matmul(centre, kernel)
    if layer.use_bias:
        mid = mid + ops.cast(layer.bias, centre.dtype)
    spread = ops.matmul(radius, ops.abs(kernel))
    _check_monotone(layer.activation, layer)
    return layer.activation(mid - spread), layer.activation(mid + spread)


def _layer_bounds(layer, lower, upper):
    if hasattr(layer, "interval_bounds"):
        return layer.interval_bounds(lower, upper)
    if isinstance(layer, _SHAPE_LAYERS):
        return layer(lower, training=False), layer(upper, training=False)
    if isinstance(layer, keras.layers.Rescaling):
        # Elementwise affine: the image of the box is spanned by the images of its corners.
        low, high = layer(lower), layer(upper)
        return ops.minimum(low, high), ops.maximum(low, high)
    if isinstance(layer, keras.layers.Dense):
        return _dense_bounds(layer, lower, upper)
    if isinstance(layer, keras.layers.Activation) or _is_monotone_relu(layer):
        if isinstance(layer, keras.layers.Activation):
            _check_monotone(layer.activation, layer)
        # A non-decreasing elementwise map sends the box's ends to the image's ends.
        return layer(lower), layer(upper)
    raise TypeError(
        f"layer {layer.name!r} ({type(layer).__name__}) has no interval bounds: supported are l_inf-dist layers, "
        "Dense, non-decreasing activations (Activation, ReLU), Rescaling, Flatten, Reshape, Dropout and LogitScale."
    )


def interval_bounds(model: keras.Model, lower: ArrayLike, upper: ArrayLike) -> tuple[Any, Any]:
    """Bounds of the inference-mode outputs of a chain of layers over the box [lower, upper].

    Args:
        model: a Sequential / chain-shaped functional model, a layer, or a list of layers.
        lower: arrays of the input shape with lower <= upper.
        upper: arrays of the input shape with lower <= upper.

    Returns:
        (lower, upper) tensors of the output shape.

    Examples:
        >>> low, high = interval_bounds(model, np.clip(x - 0.3, 0, 1), np.clip(x + 0.3, 0, 1))
    """
    layers = _chain(model)
    lower, upper = ops.convert_to_tensor(lower, "float32"), ops.convert_to_tensor(upper, "float32")
    for layer in layers:
        lower, upper = _layer_bounds(layer, lower, upper)
    return lower, upper


def _chain(model):
    layers = model if isinstance(model, (list, tuple)) else [model]
    return [leaf for layer in layers for leaf in _sublayers(layer)]


def _strip_identities(layers):
    while layers and isinstance(layers[-1], (LogitScale, keras.layers.Dropout)):
        layers = layers[:-1]
    return layers


def _elided_margins(layers, lower, upper, is_target):
    """Upper bounds of z_j - z_t over the box (entry t is 0), eliding a last linear Dense layer.

    Bounding (W_j - W_t) h + b_j - b_t directly is tighter than u_j - l_t.
    """
    layers = _strip_identities(list(layers))
    last = layers[-1]
    if isinstance(last, keras.layers.Dense) and _is_linear(last.activation):
        for layer in layers[:-1]:
            lower, upper = _layer_bounds(layer, lower, upper)
        centre, radius = (upper + lower) / 2.0, (upper - lower) / 2.0
        kernel = ops.cast(last.kernel, centre.dtype)
        target_weights = ops.matmul(ops.cast(is_target, kernel.dtype), ops.transpose(kernel))  # (N, H)
        differences = ops.expand_dims(kernel, 0) - ops.expand_dims(target_weights, 2)  # (N, H, C)
        bound = ops.einsum("nh,nhc->nc", centre, differences) + ops.einsum("nh,nhc->nc", radius, ops.abs(differences))
        if last.use_bias:
            bias = ops.cast(last.bias, centre.dtype)
            bound = bound + bias - ops.sum(ops.where(is_target, bias, 0.0), axis=-1, keepdims=True)
        return ops.where(is_target, 0.0, bound)
    for layer in layers:
        lower, upper = _layer_bounds(layer, lower, upper)
    lower_target = ops.sum(ops.where(is_target, lower, 0.0), axis=-1, keepdims=True)
    return ops.where(is_target, 0.0, upper - lower_target)


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
        x: inputs (N, ...); y: class indices (N,) or one-hot.
        eps: l_inf radius in input units (>= 0).
        clip_min: valid input range (None: unbounded).
        clip_max: valid input range (None: unbounded).
        batch_size: samples per propagation.

    Returns:
        numpy array (N, C): entry t is 0, the point is certified iff all others are < 0.
    """
    eps = _check_number("eps", eps, low=0)
    x = np.asarray(x, dtype="float32")
    y = _check_labels(y, len(x))
    low_clip = -np.inf if clip_min is None else clip_min
    high_clip = np.inf if clip_max is None else clip_max
    layers = _chain(model)
    num_classes = model.output_shape[-1]
    if np.any(y >= num_classes) or np.any(y < 0):
        raise ValueError(f"y must hold class indices in [0, {num_classes}), got values up to {np.max(y)}.")
    results = []
    for start, stop in _batches(len(x), batch_size):
        batch = x[start:stop]
        lower = np.clip(batch - eps, low_clip, high_clip)
        upper = np.clip(batch + eps, low_clip, high_clip)
        is_target = np.eye(num_classes, dtype=bool)[y[start:stop]]
        results.append(ops.convert_to_numpy(_elided_margins(layers, lower, upper, is_target)))
    return np.concatenate(results, axis=0)


def certify_ibp(
    model: keras.Model,
    x: ArrayLike,
    y: ArrayLike,
    eps: float,
    clip_min: float = 0.0,
    clip_max: float = 1.0,
    batch_size: int = 256,
):
    """Boolean array: True where IBP proves every point of the clipped eps-ball is classified as y.

    The papers' "certified accuracy" is its mean (at p = inf, see `set_p`).

    Examples:
        >>> set_p(model, float("inf"))
        >>> certified_accuracy = certify_ibp(model, x_test, y_test, eps=0.3).mean()
    """
    margins = ibp_margins(model, x, y, eps, clip_min, clip_max, batch_size)
    y = _check_labels(y, len(margins))
    others = np.where(np.eye(margins.shape[1], dtype=bool)[y], -np.inf, margins)
    return np.all(others < 0, axis=1)


def linf_lipschitz_bound(model):
    """Upper bound of the l_inf -> l_inf Lipschitz constant of a model, a layer or a chain (list) of layers.

    A model's bound walks its real graph (`deel_lip_ext.utils.model_lipschitz_bound(model, "linf")`:
    merges, ops, shared layers and nested models included); each layer answers through the Lipschitz
    protocol: 1 per l_inf-dist layer at p = inf, the largest absolute column sum of a Dense kernel,
    max |scale| for `Rescaling` (a model starting with `Rescaling(1 / std)` gets 1 / std).

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
):
    """Boolean array: True where margin / (2 L) > eps (the Lipschitz rule, L from `linf_lipschitz_bound`).

    Examples:
        >>> certified = certify_lipschitz(model, x_test, y_test, eps=0.3)
    """
    eps = _check_number("eps", eps, low=0)
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

    Returns:
        dict with "clean", "pgd", "certified" (IBP, the papers' figure) and
        "certified_lipschitz".

    Examples:
        >>> scores = evaluate_linf_robustness(model, x_test, y_test, eps=0.3, pgd_steps=100)
    """
    from deel_lip_ext.attacks import pgd

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
