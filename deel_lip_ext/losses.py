"""Losses for Lipschitz networks (deel-lip's names and semantics), in `keras.ops`.

Label conventions: binary / multi-label losses (`KR`, `HKR`, `HingeMargin`,
`TauBinaryCrossentropy`) take y in {0, 1} or {-1, 1}; multi-class losses take
one-hot y in {0, 1} or {-1, 1} (the positive entry marks the class);
`TauSparseCategoricalCrossentropy` takes integer class indices. KR counts a
sample as positive iff y == 1 (deel-lip), every other loss iff y > 0.
Shapes are checked when the loss is traced: binary labels (N,) against one
output (N, 1) are reshaped to (N, 1), integer labels given to a one-hot loss
are refused with the fix (one-hot encode them), and nothing is broadcast.

Hyper-parameters (alpha, min_margin, tau) are non-trainable float32
`keras.Variable`s, so that `deel_lip_ext.callbacks.LossParamScheduler` can
change them during `fit`; `get_config` returns their current values as floats.
On the TensorFlow and torch backends the compiled train step reads the new
value; JAX traces variables that are not model state as constants, so schedules
need TensorFlow or torch there.

Deliberate differences from deel-lip, each repeated in the class docstring:

* HKR uses deel-lip's alpha (-KR + alpha * hinge), not torchlip's
  alpha * hinge - (1 - alpha) * KR. alpha = inf means hinge only.
* `CategoricalHinge` takes the max over the *other* logits properly (deel-lip
  master's (1 - y) * f can pick the masked 0 when every logit is negative)
  and defaults to `name="CategoricalHinge"`.
* `MulticlassHinge` has no `soft_hinge_tau` (removed in deel-lip's keras3 branch too).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import keras
import numpy as np
from keras import ops
from numpy.typing import ArrayLike

__all__ = [
    "KR",
    "HKR",
    "HingeMargin",
    "MulticlassKR",
    "MulticlassHinge",
    "MulticlassHKR",
    "MulticlassSoftHKR",
    "MultiMargin",
    "CategoricalHinge",
    "TauCategoricalCrossentropy",
    "TauSparseCategoricalCrossentropy",
    "TauBinaryCrossentropy",
    "process_labels_for_multi_gpu",
]

_KR_EPSILON = 1e-7


# ---------------------------------------------------------------- label shapes


def _shape_mismatch(y_true, y_pred):
    if len(y_true.shape) != len(y_pred.shape):
        return True
    return any(a is not None and b is not None and a != b for a, b in zip(y_true.shape, y_pred.shape))


def binary_labels(y_true, y_pred, loss_name):
    """Labels of a binary / multi-label loss, shaped as the predictions (checked at trace time).

    Labels (N,) against one output per sample (N, 1) become (N, 1); any other
    shape difference is refused instead of broadcast (labels (N,) against
    outputs (N, 1) would otherwise give an (N, N) loss).
    """
    if len(y_true.shape) == len(y_pred.shape) - 1 and y_pred.shape[-1] == 1:
        y_true = ops.expand_dims(y_true, -1)
    if _shape_mismatch(y_true, y_pred):
        raise ValueError(
            f"{loss_name}: labels of shape {tuple(y_true.shape)} do not match predictions of shape "
            f"{tuple(y_pred.shape)}; give one label per output (e.g. y of shape (N, 1) for one output)."
        )
    return y_true


def one_hot_labels(y_true, y_pred, loss_name):
    """Labels of a multi-class loss: one-hot, shaped as the predictions (checked at trace time).

    Integer class indices ((N,) or (N, 1) against (N, C) logits, C > 1) are
    refused with the fix, as is any other shape difference.
    """
    classes = y_pred.shape[-1]
    if classes != 1 and (len(y_true.shape) == len(y_pred.shape) - 1 or y_true.shape[-1] == 1):
        raise ValueError(
            f"{loss_name} takes one-hot labels of the predictions' shape {tuple(y_pred.shape)}, got labels of "
            f"shape {tuple(y_true.shape)}, which look like integer class indices: one-hot encode them "
            f"(keras.utils.to_categorical(y, {classes})) or use TauSparseCategoricalCrossentropy."
        )
    if _shape_mismatch(y_true, y_pred):
        raise ValueError(
            f"{loss_name}: one-hot labels of shape {tuple(y_true.shape)} do not match predictions of shape "
            f"{tuple(y_pred.shape)}."
        )
    return y_true


def sparse_labels(y_true, y_pred, loss_name):
    """Integer class indices (N,) or (N, 1) against logits (N, C), returned as (N,) (checked at trace time)."""
    if len(y_true.shape) == len(y_pred.shape) and y_true.shape[-1] == 1:
        y_true = ops.squeeze(y_true, axis=-1)
    if len(y_true.shape) != len(y_pred.shape) - 1 or _shape_mismatch(y_true, y_pred[..., 0]):
        raise ValueError(
            f"{loss_name} takes integer class indices of shape {tuple(y_pred.shape[:-1])} or "
            f"{tuple(y_pred.shape[:-1]) + (1,)} for predictions of shape {tuple(y_pred.shape)}, got labels of "
            f"shape {tuple(y_true.shape)}; for one-hot labels use TauCategoricalCrossentropy."
        )
    return y_true


# ---------------------------------------------------------------- element-wise terms


def kr_terms(y_true: ArrayLike, y_pred: ArrayLike, multi_gpu: bool = False):
    """Per-sample KR terms; their batch mean is mean_c(mean_{P_c} f_c - mean_{N_c} f_c).

    P_c are the samples with y_c == 1, N_c the others. With `multi_gpu=True` the
    labels must come from `process_labels_for_multi_gpu` and the terms are
    mean_c f_c * y_c (summing them over replicas gives the global KR).
    """
    y_true = ops.cast(y_true, y_pred.dtype)
    if multi_gpu:
        return ops.mean(y_pred * y_true, axis=-1)
    batch_size = ops.cast(ops.shape(y_true)[0], y_pred.dtype)
    positive = ops.cast(ops.equal(y_true, 1), y_pred.dtype)
    n_positive = ops.sum(positive, axis=0)
    weights = positive / (n_positive + _KR_EPSILON) - (1 - positive) / (batch_size - n_positive + _KR_EPSILON)
    return ops.mean(batch_size * y_pred * weights, axis=-1)


def _sign(y_true, dtype):
    return ops.where(ops.greater(y_true, 0), ops.ones((), dtype), -ops.ones((), dtype))


def hinge_margin_terms(y_true: ArrayLike, y_pred: ArrayLike, min_margin: float):
    """Per-sample mean_c relu(m/2 - s_c f_c), s_c = +1 if y_c > 0 else -1."""
    sign = _sign(ops.cast(y_true, y_pred.dtype), y_pred.dtype)
    return ops.mean(ops.relu(min_margin / 2.0 - sign * y_pred), axis=-1)


def _target_mask(y_true, y_pred):
    return ops.cast(ops.greater(ops.cast(y_true, y_pred.dtype), 0), y_pred.dtype)


def multiclass_hinge_terms(y_true: ArrayLike, y_pred: ArrayLike, min_margin: float):
    """Per-sample (1/C) sum_{j != y} [relu(m/2 - f_y) + relu(m/2 + f_j)]."""
    target = _target_mask(y_true, y_pred)
    target_logit = ops.sum(y_pred * target, axis=-1, keepdims=True)
    hinge = ops.relu(min_margin / 2.0 - target_logit) + ops.relu(min_margin / 2.0 + y_pred)
    return ops.mean((1 - target) * hinge, axis=-1)


def _hkr(kr, hinge, alpha):
    # alpha = inf means hinge only; inf never enters an arithmetic branch, so
    # neither the value nor the gradient can become NaN.
    is_inf = ops.isinf(alpha)
    finite_alpha = ops.where(is_inf, ops.zeros_like(alpha), alpha)
    return ops.where(is_inf, hinge, -kr + ops.cast(finite_alpha, hinge.dtype) * hinge)


def process_labels_for_multi_gpu(labels: ArrayLike):
    """Labels for KR losses with `multi_gpu=True` (deel-lip's helper).

    Each column becomes B * (y / n_pos - (1 - y) / (B - n_pos)) with y = 1[label == 1],
    so that the KR terms are per-sample and add up across replicas with
    `reduction="sum"`. Hinge terms only look at the sign, which is preserved.

    Examples:
        >>> y_multi = process_labels_for_multi_gpu(y_train)
    """
    labels = ops.convert_to_tensor(labels)
    dtype = labels.dtype if "float" in str(labels.dtype) else "float32"
    positive = ops.cast(ops.equal(ops.cast(labels, dtype), 1), dtype)
    batch_size = ops.cast(ops.shape(labels)[0], dtype)
    n_positive = ops.sum(positive, axis=0)
    return batch_size * (
        positive / (n_positive + _KR_EPSILON) - (1 - positive) / (batch_size - n_positive + _KR_EPSILON)
    )


# ---------------------------------------------------------------- base class


class _ParametrizedLoss(keras.losses.Loss):
    """A Loss whose float hyper-parameters live in non-trainable float32 variables.

    Subclasses list them in `_params`; `get_config` returns their current values.
    """

    _params = ()

    def _set_params(self, **values):
        for name, value in values.items():
            value = float(value)
            if math.isnan(value):
                raise ValueError(f"{name} must be a number, got {value!r}.")
            variable = keras.Variable(value, dtype="float32", trainable=False, name=name)
            setattr(self, name, variable)

    def _param(self, name, dtype):
        return ops.cast(getattr(self, name), dtype)

    def get_config(self):
        config = super().get_config()
        for name in self._params:
            config[name] = float(ops.convert_to_numpy(getattr(self, name)))
        return config


def _check_nonnegative(name, value):
    if value is None or float(value) < 0 or math.isnan(float(value)):
        raise ValueError(f"{name} must be a number >= 0, got {value!r}.")
    return float(value)


def _check_positive(name, value):
    if value is None or not float(value) > 0 or not math.isfinite(float(value)):
        raise ValueError(f"{name} must be a finite number > 0, got {value!r}.")
    return float(value)


# ---------------------------------------------------------------- KR family


@keras.saving.register_keras_serializable(package="deel_lip_ext")
class KR(keras.losses.Loss):
    """Kantorovich-Rubinstein estimate of W1 between positives (y == 1) and the rest.

    Per output column c: mean_{y_c == 1} f_c - mean_{y_c != 1} f_c, averaged
    over columns. It is positive when the model separates the classes: it is an
    estimate to *maximize* (use it as a metric, or minimize `HKR(alpha=0)`).
    Batch-global: with `reduction="none"` the per-sample terms are B f (1[P]/|P|
    - 1[N]/|N|), whose mean is the estimate.

    Args:
        multi_gpu: labels were preprocessed by `process_labels_for_multi_gpu`
            (use `reduction="sum"` over replicas).
        reduction: as in `keras.losses.Loss`.
        name: as in `keras.losses.Loss`.
        dtype: as in `keras.losses.Loss`.

    Examples:
        >>> model.compile(optimizer="adam", loss=HKR(alpha=0.0), metrics=[KR()])
    """

    _labels = staticmethod(binary_labels)

    def __init__(
        self,
        multi_gpu: bool = False,
        reduction: str = "sum_over_batch_size",
        name: str = "KR",
        dtype: str | None = None,
    ) -> None:
        super().__init__(name=name, reduction=reduction, dtype=dtype)
        self.multi_gpu = bool(multi_gpu)

    def call(self, y_true: ArrayLike, y_pred: ArrayLike):
        return kr_terms(self._labels(y_true, y_pred, self.name), y_pred, self.multi_gpu)

    def get_config(self) -> dict:
        return {**super().get_config(), "multi_gpu": self.multi_gpu}


@keras.saving.register_keras_serializable(package="deel_lip_ext")
class MulticlassKR(KR):
    """KR on one-hot labels: the per-class KR estimates, averaged over classes.

    The same computation as `KR` (deel-lip); y is one-hot in {0,1} or {-1,1}.

    Examples:
        >>> model.compile(optimizer="adam", loss=MulticlassHKR(), metrics=[MulticlassKR()])
    """

    _labels = staticmethod(one_hot_labels)

    def __init__(
        self,
        multi_gpu: bool = False,
        reduction: str = "sum_over_batch_size",
        name: str = "MulticlassKR",
        dtype: str | None = None,
    ) -> None:
        super().__init__(multi_gpu=multi_gpu, reduction=reduction, name=name, dtype=dtype)


@keras.saving.register_keras_serializable(package="deel_lip_ext")
class HingeMargin(_ParametrizedLoss):
    """Hinge loss with the margin split on both sides: mean_c relu(m/2 - s_c f_c).

    s_c = +1 if y_c > 0 else -1, so labels may be {0,1} or {-1,1}.

    Args:
        min_margin: the margin m (>= 0); a variable, schedulable.
        reduction: as in `keras.losses.Loss`.
        name: as in `keras.losses.Loss`.
        dtype: as in `keras.losses.Loss`.

    Examples:
        >>> model.compile(optimizer="adam", loss=HingeMargin(min_margin=1.0))
    """

    _labels = staticmethod(binary_labels)

    _params = ("min_margin",)

    def __init__(
        self,
        min_margin: float = 1.0,
        reduction: str = "sum_over_batch_size",
        name: str = "HingeMargin",
        dtype: str | None = None,
    ) -> None:
        super().__init__(name=name, reduction=reduction, dtype=dtype)
        self._set_params(min_margin=_check_nonnegative("min_margin", min_margin))

    def call(self, y_true: ArrayLike, y_pred: ArrayLike):
        y_true = self._labels(y_true, y_pred, self.name)
        return hinge_margin_terms(y_true, y_pred, self._param("min_margin", y_pred.dtype))


@keras.saving.register_keras_serializable(package="deel_lip_ext")
class HKR(_ParametrizedLoss):
    """Hinge-regularized KR loss: -KR + alpha * HingeMargin(min_margin) (deel-lip's alpha).

    Not torchlip's alpha * hinge - (1 - alpha) * KR: alpha is any number >= 0,
    alpha = 0 gives -KR and alpha = inf gives the hinge alone.

    Args:
        alpha: weight of the hinge term (>= 0, inf allowed); schedulable.
        min_margin: hinge margin m; schedulable.
        multi_gpu: labels preprocessed by `process_labels_for_multi_gpu`.
        reduction: as in `keras.losses.Loss`.
        name: as in `keras.losses.Loss`.
        dtype: as in `keras.losses.Loss`.

    Examples:
        >>> model.compile(optimizer="adam", loss=HKR(alpha=10.0, min_margin=1.0), metrics=[KR()])
    """

    _labels = staticmethod(binary_labels)

    _params = ("alpha", "min_margin")

    def __init__(
        self,
        alpha: float,
        min_margin: float = 1.0,
        multi_gpu: bool = False,
        reduction: str = "sum_over_batch_size",
        name: str = "HKR",
        dtype: str | None = None,
    ) -> None:
        super().__init__(name=name, reduction=reduction, dtype=dtype)
        self.multi_gpu = bool(multi_gpu)
        self._set_params(
            alpha=_check_nonnegative("alpha", alpha), min_margin=_check_nonnegative("min_margin", min_margin)
        )

    def _hinge(self, y_true, y_pred):
        return hinge_margin_terms(y_true, y_pred, self._param("min_margin", y_pred.dtype))

    def call(self, y_true: ArrayLike, y_pred: ArrayLike):
        y_true = self._labels(y_true, y_pred, self.name)
        kr = kr_terms(y_true, y_pred, self.multi_gpu)
        return _hkr(kr, self._hinge(y_true, y_pred), self.alpha)

    def get_config(self) -> dict:
        return {**super().get_config(), "multi_gpu": self.multi_gpu}


@keras.saving.register_keras_serializable(package="deel_lip_ext")
class MulticlassHinge(_ParametrizedLoss):
    """One-vs-all hinge: (1/C) sum_{j != y} [relu(m/2 - f_y) + relu(m/2 + f_j)].

    The true-class term is counted C - 1 times, and the sum is divided by C
    (deel-lip). y is one-hot in {0,1} or {-1,1}.

    Args:
        min_margin: the margin m (>= 0); schedulable.
        reduction: as in `keras.losses.Loss`.
        name: as in `keras.losses.Loss`.
        dtype: as in `keras.losses.Loss`.

    Examples:
        >>> model.compile(optimizer="adam", loss=MulticlassHinge(min_margin=1.0))
    """

    _labels = staticmethod(one_hot_labels)

    _params = ("min_margin",)

    def __init__(
        self,
        min_margin: float = 1.0,
        reduction: str = "sum_over_batch_size",
        name: str = "MulticlassHinge",
        dtype: str | None = None,
    ) -> None:
        super().__init__(name=name, reduction=reduction, dtype=dtype)
        self._set_params(min_margin=_check_nonnegative("min_margin", min_margin))

    def call(self, y_true: ArrayLike, y_pred: ArrayLike):
        y_true = self._labels(y_true, y_pred, self.name)
        return multiclass_hinge_terms(y_true, y_pred, self._param("min_margin", y_pred.dtype))


@keras.saving.register_keras_serializable(package="deel_lip_ext")
class MulticlassHKR(HKR):
    """-MulticlassKR + alpha * MulticlassHinge(min_margin) (deel-lip's alpha; inf: hinge only).

    Args:
        alpha: weight of the hinge term (>= 0, inf allowed); schedulable.
        min_margin: hinge margin m; schedulable.
        multi_gpu: labels preprocessed by `process_labels_for_multi_gpu`.
        reduction: as in `keras.losses.Loss`.
        name: as in `keras.losses.Loss`.
        dtype: as in `keras.losses.Loss`.

    Examples:
        >>> model.compile(optimizer="adam", loss=MulticlassHKR(alpha=10.0, min_margin=1.0))
    """

    _labels = staticmethod(one_hot_labels)

    def __init__(
        self,
        alpha: float = 10.0,
        min_margin: float = 1.0,
        multi_gpu: bool = False,
        reduction: str = "sum_over_batch_size",
        name: str = "MulticlassHKR",
        dtype: str | None = None,
    ) -> None:
        super().__init__(
            alpha=alpha, min_margin=min_margin, multi_gpu=multi_gpu, reduction=reduction, name=name, dtype=dtype
        )

    def _hinge(self, y_true, y_pred):
        return multiclass_hinge_terms(y_true, y_pred, self._param("min_margin", y_pred.dtype))


# ---------------------------------------------------------------- margin losses


@keras.saving.register_keras_serializable(package="deel_lip_ext")
class MultiMargin(_ParametrizedLoss):
    """Multi-class hinge of the BCOP paper (torch `multi_margin_loss`, p = 1).

    Per sample: (1/C) sum_{j != y} relu(m - f_y + f_j). The sum over the wrong
    classes is divided by C, not C - 1, as in torch, LConvNet and deel-lip. For
    an L-Lipschitz (L2) network trained to certify eps_train, use
    m = sqrt(2) * eps_train * L.

    Args:
        min_margin: the margin m (>= 0); schedulable.
        reduction: as in `keras.losses.Loss`.
        name: as in `keras.losses.Loss`.
        dtype: as in `keras.losses.Loss`.

    Examples:
        >>> model.compile(optimizer="adam", loss=MultiMargin(min_margin=math.sqrt(2) * 1.5))
    """

    _labels = staticmethod(one_hot_labels)

    _params = ("min_margin",)

    def __init__(
        self,
        min_margin: float = 1.0,
        reduction: str = "sum_over_batch_size",
        name: str = "MultiMargin",
        dtype: str | None = None,
    ) -> None:
        super().__init__(name=name, reduction=reduction, dtype=dtype)
        self._set_params(min_margin=_check_nonnegative("min_margin", min_margin))

    def call(self, y_true: ArrayLike, y_pred: ArrayLike):
        target = _target_mask(self._labels(y_true, y_pred, self.name), y_pred)
        target_logit = ops.sum(y_pred * target, axis=-1, keepdims=True)
        margin = self._param("min_margin", y_pred.dtype)
        return ops.mean((1 - target) * ops.relu(margin - target_logit + y_pred), axis=-1)


@keras.saving.register_keras_serializable(package="deel_lip_ext")
class CategoricalHinge(_ParametrizedLoss):
    """relu(m - (f_y - max_{j != y} f_j)): hinge on the logit margin.

    Unlike deel-lip master, the max is over the other logits only (their
    (1 - y) * f can return the masked 0 when every other logit is negative).

    Args:
        min_margin: the margin m (>= 0, required as in deel-lip); schedulable.
        reduction: as in `keras.losses.Loss`.
        name: as in `keras.losses.Loss`.
        dtype: as in `keras.losses.Loss`.

    Examples:
        >>> model.compile(optimizer="adam", loss=CategoricalHinge(min_margin=0.5))
    """

    _labels = staticmethod(one_hot_labels)

    _params = ("min_margin",)

    def __init__(
        self,
        min_margin: float,
        reduction: str = "sum_over_batch_size",
        name: str = "CategoricalHinge",
        dtype: str | None = None,
    ) -> None:
        super().__init__(name=name, reduction=reduction, dtype=dtype)
        self._set_params(min_margin=_check_nonnegative("min_margin", min_margin))

    def call(self, y_true: ArrayLike, y_pred: ArrayLike):
        y_true = self._labels(y_true, y_pred, self.name)
        is_target = ops.greater(ops.cast(y_true, y_pred.dtype), 0)
        target_logit = ops.sum(ops.where(is_target, y_pred, ops.zeros_like(y_pred)), axis=-1)
        best_other = ops.max(ops.where(is_target, ops.full_like(y_pred, -np.inf), y_pred), axis=-1)
        return ops.relu(self._param("min_margin", y_pred.dtype) - (target_logit - best_other))


# ---------------------------------------------------------------- tempered cross-entropies


@keras.saving.register_keras_serializable(package="deel_lip_ext")
class TauCategoricalCrossentropy(_ParametrizedLoss):
    """Cross-entropy of softmax(tau * f) against one-hot y, divided by tau.

    Labels one-hot in {0,1} or {-1,1} (the positive entry is the class).

    Args:
        tau: temperature (> 0, required); schedulable.
        reduction: as in `keras.losses.Loss`.
        name: as in `keras.losses.Loss`.
        dtype: as in `keras.losses.Loss`.

    Examples:
        >>> model.compile(optimizer="adam", loss=TauCategoricalCrossentropy(tau=3.0))
    """

    _labels = staticmethod(one_hot_labels)

    _params = ("tau",)

    def __init__(
        self,
        tau: float,
        reduction: str = "sum_over_batch_size",
        name: str = "TauCategoricalCrossentropy",
        dtype: str | None = None,
    ) -> None:
        super().__init__(name=name, reduction=reduction, dtype=dtype)
        self._set_params(tau=_check_positive("tau", tau))

    def call(self, y_true: ArrayLike, y_pred: ArrayLike):
        tau = self._param("tau", y_pred.dtype)
        target = _target_mask(self._labels(y_true, y_pred, self.name), y_pred)
        return keras.losses.categorical_crossentropy(target, tau * y_pred, from_logits=True) / tau


@keras.saving.register_keras_serializable(package="deel_lip_ext")
class TauSparseCategoricalCrossentropy(_ParametrizedLoss):
    """Cross-entropy of softmax(tau * f) against integer labels, divided by tau.

    Args:
        tau: temperature (> 0, required); schedulable.
        reduction: as in `keras.losses.Loss`.
        name: as in `keras.losses.Loss`.
        dtype: as in `keras.losses.Loss`.

    Examples:
        >>> model.compile(optimizer="adam", loss=TauSparseCategoricalCrossentropy(tau=3.0))
    """

    _labels = staticmethod(sparse_labels)

    _params = ("tau",)

    def __init__(
        self,
        tau: float,
        reduction: str = "sum_over_batch_size",
        name: str = "TauSparseCategoricalCrossentropy",
        dtype: str | None = None,
    ) -> None:
        super().__init__(name=name, reduction=reduction, dtype=dtype)
        self._set_params(tau=_check_positive("tau", tau))

    def call(self, y_true: ArrayLike, y_pred: ArrayLike):
        tau = self._param("tau", y_pred.dtype)
        labels = ops.cast(self._labels(y_true, y_pred, self.name), "int32")
        return keras.losses.sparse_categorical_crossentropy(labels, tau * y_pred, from_logits=True) / tau


@keras.saving.register_keras_serializable(package="deel_lip_ext")
class TauBinaryCrossentropy(_ParametrizedLoss):
    """Binary cross-entropy of sigmoid(tau * f) against 1[y > 0], divided by tau.

    Labels in {0,1} or {-1,1}; averaged over the last axis (multi-label).

    Args:
        tau: temperature (> 0, required); schedulable.
        reduction: as in `keras.losses.Loss`.
        name: as in `keras.losses.Loss`.
        dtype: as in `keras.losses.Loss`.

    Examples:
        >>> model.compile(optimizer="adam", loss=TauBinaryCrossentropy(tau=3.0))
    """

    _labels = staticmethod(binary_labels)

    _params = ("tau",)

    def __init__(
        self,
        tau: float,
        reduction: str = "sum_over_batch_size",
        name: str = "TauBinaryCrossentropy",
        dtype: str | None = None,
    ) -> None:
        super().__init__(name=name, reduction=reduction, dtype=dtype)
        self._set_params(tau=_check_positive("tau", tau))

    def call(self, y_true: ArrayLike, y_pred: ArrayLike):
        tau = self._param("tau", y_pred.dtype)
        target = _target_mask(self._labels(y_true, y_pred, self.name), y_pred)
        logits = tau * y_pred
        # log(1 + exp(-|z|)) + max(z, 0) - z t: the stable logistic loss.
        per_output = ops.softplus(-ops.abs(logits)) + ops.relu(logits) - logits * target
        return ops.mean(per_output, axis=-1) / tau


@keras.saving.register_keras_serializable(package="deel_lip_ext")
class MulticlassSoftHKR(_ParametrizedLoss):
    """Multi-class HKR whose non-target classes are weighted by a softmax (deel-lip 1.5, for many classes).

    Per sample, with s_j = +1 for the target class and -1 otherwise, weights
    w_y = 1 and w_j = softmax_{j != y}(t f_j), and the temperature
    t = clip(temperature * m / clip(mu, m, 20000), 0.005, 250) (no gradient):

        loss = (1 / alpha) sum_j w_j (-s_j f_j) + sum_j w_j relu(m/2 - s_j f_j)

    (alpha = inf: the soft hinge alone). mu is a running mean of |f| updated
    by every call: mu <- clip(alpha_mean mu + (1 - alpha_mean) mean|f|,
    0.005, 1000), starting at m; it lives in the non-trainable variable
    `current_mean`. Being stateful, the loss of a batch depends on the
    batches seen before, as in deel-lip. The update runs on the TensorFlow and
    torch backends; JAX traces losses as pure functions (not supported there).

    Args:
        alpha: weight of the hinge relative to the KR term (> 0, inf allowed); schedulable.
        min_margin: hinge margin m (> 0); schedulable.
        alpha_mean: momentum of the running mean of |f|, in [0, 1].
        temperature: softmax temperature factor (> 0).
        reduction: as in `keras.losses.Loss`.
        name: name of the loss.
        dtype: as in `keras.losses.Loss`.

    Examples:
        >>> model.compile(optimizer="adam", loss=MulticlassSoftHKR(alpha=10.0, min_margin=1.0))
    """

    _params = ("alpha", "min_margin")

    def __init__(
        self,
        alpha: float = 10.0,
        min_margin: float = 1.0,
        alpha_mean: float = 0.99,
        temperature: float = 1.0,
        reduction: str | None = "sum_over_batch_size",
        name: str = "MulticlassSoftHKR",
        dtype: str | None = None,
    ) -> None:
        super().__init__(name=name, reduction=reduction, dtype=dtype)
        if alpha is None or not float(alpha) > 0:
            raise ValueError(f"alpha must be a number > 0 (inf: hinge only), got {alpha!r}.")
        if alpha_mean is None or not 0.0 <= float(alpha_mean) <= 1.0:
            raise ValueError(f"alpha_mean must be in [0, 1], got {alpha_mean!r}.")
        self._set_params(alpha=float(alpha), min_margin=_check_positive("min_margin", min_margin))
        self.alpha_mean = float(alpha_mean)
        self.temperature = _check_positive("temperature", temperature)
        self.current_mean = keras.Variable(float(min_margin), dtype="float32", trainable=False, name="current_mean")

    def _softmax_weights(self, target, y_pred):
        """w_y = 1, w_j = softmax over the other classes of t f_j; updates the running mean."""
        min_margin = self._param("min_margin", "float32")
        batch_mean = ops.mean(ops.abs(ops.stop_gradient(ops.cast(y_pred, "float32"))))
        mean = ops.clip(self.alpha_mean * self.current_mean + (1.0 - self.alpha_mean) * batch_mean, 0.005, 1000.0)
        self.current_mean.assign(mean)
        scale = ops.clip(mean, min_margin, 20000.0)
        temperature = ops.cast(ops.clip(self.temperature * min_margin / scale, 0.005, 250.0), y_pred.dtype)
        logits = temperature * y_pred
        # Softmax over the non-target classes: the target logit is replaced by the row minimum before the
        # max shift (a finite value in every dtype), then excluded from the sum.
        masked = ops.where(target > 0, ops.min(logits, axis=-1, keepdims=True), logits)
        exp = ops.exp(masked - ops.max(masked, axis=-1, keepdims=True)) * (1.0 - target)
        softmax = exp / ops.sum(exp, axis=-1, keepdims=True)
        return ops.where(target > 0, ops.ones_like(y_pred), softmax)

    def _soft_terms(self, target, y_pred):
        """Per-sample (soft hinge, soft KR) terms; updates the running mean."""
        weights = self._softmax_weights(target, y_pred)
        signed = y_pred * (2.0 * target - 1.0)
        hinge = ops.sum(weights * ops.relu(self._param("min_margin", y_pred.dtype) / 2.0 - signed), axis=-1)
        return hinge, ops.sum(weights * -signed, axis=-1)

    def call(self, y_true: ArrayLike, y_pred: ArrayLike):
        hinge, kr = self._soft_terms(_target_mask(y_true, y_pred), y_pred)
        is_inf = ops.isinf(self.alpha)
        inverse_alpha = ops.cast(ops.where(is_inf, ops.zeros_like(self.alpha), 1.0 / self.alpha), y_pred.dtype)
        return hinge + inverse_alpha * kr

    def get_config(self):
        return {**super().get_config(), "alpha_mean": self.alpha_mean, "temperature": self.temperature}


# ---------------------------------------------------------------- torchlip HKR variants, EMMA (helper M3)


def _check_unit_interval(name, value):
    if value is None or not 0.0 <= float(value) <= 1.0:
        raise ValueError(f"{name} must be a number in [0, 1] (deel-torchlip's convention), got {value!r}.")
    return float(value)


@keras.saving.register_keras_serializable(package="deel_lip_ext")
class SoftHKR(MulticlassSoftHKR):
    """deel-torchlip's `SoftHKRMulticlassLoss`: (1 - alpha) * soft KR + alpha * soft hinge, alpha in [0, 1].

    The soft terms, the softmax weights over the non-target classes and the
    running mean of |f| are those of `MulticlassSoftHKR` (deel-lip's loss,
    alpha_deel_lip = alpha / (1 - alpha), up to the factor alpha); only the
    weighting follows torchlip: alpha = 0 is the soft KR alone, alpha = 1 the
    soft hinge alone. Labels are one-hot (or +/-1 one-hot), shaped as the logits.
    Stateful like `MulticlassSoftHKR` (not on JAX).

    Args:
        alpha: weight of the hinge, in [0, 1]; schedulable.
        min_margin: hinge margin m (> 0); schedulable.
        alpha_mean: momentum of the running mean of |f|, in [0, 1].
        temperature: softmax temperature factor (> 0).
        reduction: as in `keras.losses.Loss`.
        name: as in `keras.losses.Loss`.
        dtype: as in `keras.losses.Loss`.

    Examples:
        >>> model.compile(optimizer="adam", loss=SoftHKR(alpha=0.9, min_margin=1.0))
    """

    _labels = staticmethod(one_hot_labels)

    def __init__(
        self,
        alpha: float = 0.9,
        min_margin: float = 1.0,
        alpha_mean: float = 0.99,
        temperature: float = 1.0,
        reduction: str = "sum_over_batch_size",
        name: str = "SoftHKR",
        dtype: str | None = None,
    ) -> None:
        alpha = _check_unit_interval("alpha", alpha)
        super().__init__(1.0, min_margin, alpha_mean, temperature, reduction=reduction, name=name, dtype=dtype)
        self._set_params(alpha=alpha)

    def call(self, y_true: ArrayLike, y_pred: ArrayLike):
        target = _target_mask(self._labels(y_true, y_pred, self.name), y_pred)
        hinge, kr = self._soft_terms(target, y_pred)
        alpha = self._param("alpha", y_pred.dtype)
        return (1.0 - alpha) * kr + alpha * hinge


@keras.saving.register_keras_serializable(package="deel_lip_ext")
class LseHKR(_ParametrizedLoss):
    """deel-torchlip's `LseHKRMulticlassLoss`: HKR on the target logit against a log-sum-exp of the others.

    With g = temperature * f, the target logit g_y and
    lse = (1 / t) log sum_{j != y} exp(t g_j), t = log(C - 1) / (penalty * m / 2)
    (so max_j g_j <= lse <= max_j g_j + penalty * m / 2):

        loss = (1 - alpha) (lse - g_y) + alpha (relu(m/2 - g_y) + relu(m/2 + lse))

    With two classes the sum has one term and lse is the other logit.

    Args:
        alpha: weight of the hinge, in [0, 1] (torchlip's convention); schedulable.
        temperature: factor applied to the logits (> 0).
        penalty: slack of the log-sum-exp over the max, in margins (> 0).
        min_margin: hinge margin m (> 0); schedulable.
        reduction: as in `keras.losses.Loss`.
        name: as in `keras.losses.Loss`.
        dtype: as in `keras.losses.Loss`.

    Examples:
        >>> model.compile(optimizer="adam", loss=LseHKR(alpha=0.9, min_margin=1.0))
    """

    _labels = staticmethod(one_hot_labels)

    _params = ("alpha", "min_margin")

    def __init__(
        self,
        alpha: float = 1.0,
        temperature: float = 1.0,
        penalty: float = 1.0,
        min_margin: float = 1.0,
        reduction: str = "sum_over_batch_size",
        name: str = "LseHKR",
        dtype: str | None = None,
    ) -> None:
        super().__init__(name=name, reduction=reduction, dtype=dtype)
        self.temperature = _check_positive("temperature", temperature)
        self.penalty = _check_positive("penalty", penalty)
        self._set_params(
            alpha=_check_unit_interval("alpha", alpha), min_margin=_check_positive("min_margin", min_margin)
        )

    def call(self, y_true: ArrayLike, y_pred: ArrayLike):
        target = _target_mask(self._labels(y_true, y_pred, self.name), y_pred)
        logits = y_pred * self.temperature
        margin = self._param("min_margin", y_pred.dtype)
        positive = ops.sum(logits * target, axis=-1)
        classes = y_pred.shape[-1]
        if classes == 2:
            lse = ops.sum(logits * (1.0 - target), axis=-1)
        else:
            sharpness = math.log(classes - 1) / (self.penalty * margin / 2.0)
            negatives = ops.where(target > 0, ops.min(logits, axis=-1, keepdims=True), logits) * sharpness
            shift = ops.max(negatives, axis=-1, keepdims=True)
            exp = ops.exp(negatives - shift) * (1.0 - target)
            lse = (ops.log(ops.sum(exp, axis=-1)) + ops.squeeze(shift, -1)) / sharpness
        hinge = ops.relu(margin / 2.0 - positive) + ops.relu(margin / 2.0 + lse)
        alpha = self._param("alpha", y_pred.dtype)
        return (1.0 - alpha) * (lse - positive) + alpha * hinge

    def get_config(self) -> dict:
        return {**super().get_config(), "temperature": self.temperature, "penalty": self.penalty}


def dense_pairwise_lipschitz(kernel: ArrayLike, body_lipschitz: float = 1.0) -> Any:
    """Lipschitz constants K_ij of f_i - f_j for logits f = body(x) @ kernel + b: body_lipschitz * ||w_i - w_j||.

    Args:
        kernel: the last dense layer's kernel (n, C) (e.g. its `effective_kernel()`).
        body_lipschitz: Lipschitz constant of the network before that layer (e.g. `model_lipschitz_bound`).

    Returns:
        A (C, C) tensor with a zero diagonal.
    """
    kernel = ops.convert_to_tensor(kernel)
    differences = ops.expand_dims(kernel, -1) - ops.expand_dims(kernel, -2)  # (n, C, C)
    return body_lipschitz * ops.sqrt(ops.maximum(ops.sum(ops.square(differences), axis=0), 0.0))


@keras.saving.register_keras_serializable(package="deel_lip_ext")
class EMMA(_ParametrizedLoss):
    """Efficient Margin MAximization (LiResNet, Hu et al. 2023): cross-entropy on margin-shifted logits.

    With K_yj a bound of the Lipschitz constant of f_y - f_j, the pair's
    certified radius (f_y - f_j) / K_yj is capped at epsilon and floored at
    0.01 epsilon: e_j = clip((f_y - f_j) / (epsilon K_yj), 0.01, 1) (no
    gradient through e_j nor K), and each non-target logit is raised by
    e_j * epsilon * K_yj, its worst value within that radius (the reference
    implementation's formula, hukkai/liresnet and ntuaislab/BRONet):

        loss = CE(softmax(z), y),  z_j = f_j + e_j epsilon K_yj (j != y),  z_y = f_y

    K is either one number (`lipschitz`, the same for every pair: sqrt(2) L
    for an L-Lipschitz network in L2) or a callable returning the (C, C)
    matrix, e.g. `lambda: dense_pairwise_lipschitz(head.effective_kernel(), body_bound)`
    (a callable is not serializable: `get_config` refuses).

    Args:
        epsilon: certification radius targeted (>= 0); schedulable.
        lipschitz: a number > 0 (K_yj for every pair) or a callable returning the (C, C) matrix K.
        reduction: as in `keras.losses.Loss`.
        name: as in `keras.losses.Loss`.
        dtype: as in `keras.losses.Loss`.

    Examples:
        >>> model.compile(optimizer="adam", loss=EMMA(epsilon=36 / 255, lipschitz=math.sqrt(2)))
    """

    _labels = staticmethod(one_hot_labels)

    _params = ("epsilon",)

    def __init__(
        self,
        epsilon: float,
        lipschitz: float | Callable = math.sqrt(2.0),
        reduction: str = "sum_over_batch_size",
        name: str = "EMMA",
        dtype: str | None = None,
    ) -> None:
        super().__init__(name=name, reduction=reduction, dtype=dtype)
        if not callable(lipschitz):
            lipschitz = _check_positive("lipschitz", lipschitz)
        self.lipschitz = lipschitz
        self._set_params(epsilon=_check_nonnegative("epsilon", epsilon))

    def _pair_constants(self, target, dtype):
        if not callable(self.lipschitz):
            return ops.full_like(target, self.lipschitz)
        matrix = ops.cast(ops.stop_gradient(self.lipschitz()), dtype)
        return ops.matmul(target, matrix)  # row y of K for each sample

    def shifted_logits(self, target: ArrayLike, y_pred: ArrayLike):
        """The logits z (relative to the target logit) of the formula, for a 0/1 target mask."""
        relative = y_pred - ops.sum(y_pred * target, axis=-1, keepdims=True)
        margin = self._param("epsilon", y_pred.dtype) * self._pair_constants(target, y_pred.dtype) * (1.0 - target)
        radius = ops.stop_gradient(ops.clip(-relative / ops.maximum(margin, 1e-8), 0.01, 1.0))
        return relative + radius * margin

    def call(self, y_true: ArrayLike, y_pred: ArrayLike):
        target = _target_mask(self._labels(y_true, y_pred, self.name), y_pred)
        return keras.losses.categorical_crossentropy(target, self.shifted_logits(target, y_pred), from_logits=True)

    def get_config(self) -> dict:
        if callable(self.lipschitz):
            raise ValueError(
                "EMMA with a callable `lipschitz` cannot be serialized: pass a number, or recreate the loss "
                "with its callable after loading (compile=False)."
            )
        return {**super().get_config(), "lipschitz": self.lipschitz}


@keras.saving.register_keras_serializable(package="deel_lip_ext")
class LogitAnnealing(EMMA):
    """Logit Annealing loss (BRONet, Lai et al., ICML 2025) on EMMA's shifted logits.

    With z the logits of `EMMA` and o = (z - offset * onehot(y)) / temperature,
    CE = -log softmax(o)_y and p = exp(-CE):

        loss = temperature * (1 - p)^gamma * CE

    (a focal-style factor that anneals the push on samples already far from
    the decision boundary).

    Args:
        epsilon: certification radius targeted (>= 0); schedulable.
        lipschitz: as in `EMMA`.
        gamma: annealing exponent (>= 0).
        offset: margin subtracted from the target logit.
        temperature: softmax temperature (> 0).
        reduction: as in `keras.losses.Loss`.
        name: as in `keras.losses.Loss`.
        dtype: as in `keras.losses.Loss`.

    Examples:
        >>> model.compile(optimizer="adam", loss=LogitAnnealing(epsilon=36 / 255, lipschitz=math.sqrt(2)))
    """

    def __init__(
        self,
        epsilon: float,
        lipschitz: float | Callable = math.sqrt(2.0),
        gamma: float = 5.0,
        offset: float = 2.0,
        temperature: float = 0.75,
        reduction: str = "sum_over_batch_size",
        name: str = "LogitAnnealing",
        dtype: str | None = None,
    ) -> None:
        super().__init__(epsilon, lipschitz, reduction=reduction, name=name, dtype=dtype)
        self.gamma = _check_nonnegative("gamma", gamma)
        self.offset = _check_nonnegative("offset", offset)
        self.temperature = _check_positive("temperature", temperature)

    def call(self, y_true: ArrayLike, y_pred: ArrayLike):
        target = _target_mask(self._labels(y_true, y_pred, self.name), y_pred)
        logits = (self.shifted_logits(target, y_pred) - self.offset * target) / self.temperature
        cross_entropy = keras.losses.categorical_crossentropy(target, logits, from_logits=True)
        return self.temperature * (1.0 - ops.exp(-cross_entropy)) ** self.gamma * cross_entropy

    def get_config(self) -> dict:
        return {**super().get_config(), "gamma": self.gamma, "offset": self.offset, "temperature": self.temperature}


__all__ += ["SoftHKR", "LseHKR", "EMMA", "LogitAnnealing", "dense_pairwise_lipschitz"]

# The l_inf-dist losses (v1/v2 hinge and cross-entropy) live with the l_inf-dist training code.
from deel_lip_ext.linf import ClippedHingeCrossEntropy, HybridIntervalCrossEntropy, LInfDistHinge  # noqa: E402

__all__ += ["LInfDistHinge", "ClippedHingeCrossEntropy", "HybridIntervalCrossEntropy"]
