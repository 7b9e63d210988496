"""Tempered cross-entropies (deel-lip's Tau losses): the logits divided by tau, the loss divided by tau."""

from __future__ import annotations


import keras
from keras import ops
from numpy.typing import ArrayLike

from deel_lip_ext.losses.base import (
    _ParametrizedLoss,
    _check_positive,
    _target_mask,
    binary_labels,
    one_hot_labels,
    class_index_is_valid,
    nan_where_invalid,
    sparse_labels,
)

__all__ = ["TauCategoricalCrossentropy", "TauSparseCategoricalCrossentropy", "TauBinaryCrossentropy"]

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

    A label outside [0, C) gives a NaN loss on every backend (TensorFlow and
    PyTorch raise first; JAX's compiled step cannot).

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
        losses = keras.losses.sparse_categorical_crossentropy(labels, tau * y_pred, from_logits=True) / tau
        return nan_where_invalid(losses, class_index_is_valid(labels, y_pred.shape[-1]))


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
