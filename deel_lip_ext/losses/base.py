"""What every loss of `deel_lip_ext.losses` shares: label shape checks, per-sample terms, schedulable parameters."""

from __future__ import annotations

import math
from typing import Any

import keras
from keras import ops
from numpy.typing import ArrayLike

from deel_lip_ext._saving import check_saved_whole
from deel_lip_ext._validation import check_number

__all__ = [
    "binary_labels",
    "one_hot_labels",
    "sparse_labels",
    "kr_terms",
    "nan_where_invalid",
    "class_index_is_valid",
    "hinge_margin_terms",
    "multiclass_hinge_terms",
    "process_labels_for_multi_gpu",
]


# ---------------------------------------------------------------- label shapes


def _shape_mismatch(y_true, y_pred):
    if len(y_true.shape) != len(y_pred.shape):
        return True
    return any(a is not None and b is not None and a != b for a, b in zip(y_true.shape, y_pred.shape))


def binary_labels(y_true: ArrayLike, y_pred: ArrayLike, loss_name: str) -> Any:
    """Labels of a binary / multi-label loss, shaped as the predictions (checked at trace time).

    Labels (N,) against one output per sample (N, 1) become (N, 1); any other
    shape difference is refused instead of broadcast (labels (N,) against
    outputs (N, 1) would otherwise give an (N, N) loss).

    Args:
        y_true: labels tensor, of the predictions' shape or (N,) for predictions (N, 1).
        y_pred: predictions tensor (N, ...) of the loss.
        loss_name: the loss's name, for the error messages.

    Returns:
        `y_true`, of the shape of `y_pred`.
    """
    if len(y_true.shape) == len(y_pred.shape) - 1 and y_pred.shape[-1] == 1:
        y_true = ops.expand_dims(y_true, -1)
    if _shape_mismatch(y_true, y_pred):
        raise ValueError(
            f"{loss_name}: labels of shape {tuple(y_true.shape)} do not match predictions of shape "
            f"{tuple(y_pred.shape)}; give one label per output (e.g. y of shape (N, 1) for one output)."
        )
    return y_true


def one_hot_labels(y_true: ArrayLike, y_pred: ArrayLike, loss_name: str) -> Any:
    """Labels of a multi-class loss: one-hot, shaped as the predictions (checked at trace time).

    Integer class indices ((N,) or (N, 1) against (N, C) logits, C > 1) are
    refused with the fix, as is any other shape difference, and predictions
    whose class axis has size 1 behind other axes ((N, C, 1): each entry
    would be a one-class problem, with a loss of 0).

    Args:
        y_true: one-hot labels tensor, of the predictions' shape.
        y_pred: logits tensor (N, C) (or (N, ..., C)).
        loss_name: the loss's name, for the error messages.

    Returns:
        `y_true`, unchanged.
    """
    classes = y_pred.shape[-1]
    if classes == 1 and len(y_pred.shape) > 2:
        raise ValueError(
            f"{loss_name}: predictions of shape {tuple(y_pred.shape)} have a class axis (the last) of size 1: "
            "give logits of shape (N, C), e.g. with a keras.layers.Flatten() or Reshape before the loss."
        )
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


def sparse_labels(y_true: ArrayLike, y_pred: ArrayLike, loss_name: str) -> Any:
    """Integer class indices (N,) or (N, 1) against logits (N, C), returned as (N,) (checked at trace time).

    Args:
        y_true: integer class indices tensor (N,) or (N, 1) (more generally, `y_pred`'s shape without its last axis).
        y_pred: logits tensor (N, C).
        loss_name: the loss's name, for the error messages.
    """
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


def kr_terms(y_true: ArrayLike, y_pred: ArrayLike, multi_gpu: bool = False) -> Any:
    r"""Per-sample KR terms; their batch mean is $\mathrm{mean}_c(\mathrm{mean}_{P_c} f_c - \mathrm{mean}_{N_c} f_c)$.

    P_c are the samples with y_c == 1, N_c the others. With `multi_gpu=True` the
    labels must come from `process_labels_for_multi_gpu` and the terms are
    mean_c f_c * y_c (summing them over replicas gives the global KR).

    Args:
        y_true: labels (N, C) in {0, 1} or {-1, 1} (1 marks P_c), or those of `process_labels_for_multi_gpu`.
        y_pred: outputs f, tensor (N, C).
        multi_gpu: whether `y_true` are the weights of `process_labels_for_multi_gpu` (see above).

    Returns:
        A tensor (N,) in `y_pred`'s dtype.
    """
    y_true = ops.cast(y_true, y_pred.dtype)
    if multi_gpu:
        return ops.mean(y_pred * y_true, axis=-1)
    batch_size = ops.cast(ops.shape(y_true)[0], y_pred.dtype)
    positive = ops.cast(ops.equal(y_true, 1), y_pred.dtype)
    return ops.mean(batch_size * y_pred * _kr_weights(positive, batch_size), axis=-1)


def _kr_weights(positive, batch_size):
    """1 / n_pos on the positives of each column, -1 / n_neg on the others; 0 / 0 nowhere.

    The counts are integers, so dividing by max(count, 1) changes no weight of a
    class that is present, and an absent class's weights are 0 (deel-lip's count
    + 1e-7 was folded to 0 by compilers: (B - n) + 1e-7 rounds to B - n once
    reassociated, and a batch without negatives gave 0 / 0 = NaN).
    """
    n_positive = ops.sum(positive, axis=0)
    one = ops.ones((), positive.dtype)
    return positive / ops.maximum(n_positive, one) - (1 - positive) / ops.maximum(batch_size - n_positive, one)


def _sign(y_true, dtype):
    return ops.where(ops.greater(y_true, 0), ops.ones((), dtype), -ops.ones((), dtype))


def hinge_margin_terms(y_true: ArrayLike, y_pred: ArrayLike, min_margin: float) -> Any:
    """Per-sample mean_c relu(m/2 - s_c f_c), s_c = +1 if y_c > 0 else -1.

    Args:
        y_true: labels (N, C), in {0, 1} or {-1, 1} (only their sign counts).
        y_pred: outputs f, tensor (N, C).
        min_margin: the margin m (the hinge asks s_c f_c >= m / 2).

    Returns:
        A tensor (N,) in `y_pred`'s dtype.
    """
    sign = _sign(ops.cast(y_true, y_pred.dtype), y_pred.dtype)
    return ops.mean(ops.relu(min_margin / 2.0 - sign * y_pred), axis=-1)


def _target_mask(y_true, y_pred):
    return ops.cast(ops.greater(ops.cast(y_true, y_pred.dtype), 0), y_pred.dtype)


def multiclass_hinge_terms(y_true: ArrayLike, y_pred: ArrayLike, min_margin: float) -> Any:
    r"""Per-sample $\frac{1}{C} \sum_c w_c \, \mathrm{relu}(m/2 - s_c f_c)$, $s_c = \pm 1$ as $y_c > 0$ or not,
    $w_c = C - 1$ where $s_c = 1$, else 1.

    deel-lip's elementwise definition: on a one-hot row (target y) it is
    $\frac{1}{C} \sum_{j \ne y} [\mathrm{relu}(m/2 - f_y) + \mathrm{relu}(m/2 + f_j)]$; a row with no
    positive entry (binary labels in one column, multi-label data) gets the terms of its negatives only.

    Args:
        y_true: labels (N, C), one-hot in {0, 1} or {-1, 1} (only their sign counts).
        y_pred: logits f, tensor (N, C).
        min_margin: the margin m.

    Returns:
        A tensor (N,) in `y_pred`'s dtype.
    """
    sign = _sign(ops.cast(y_true, y_pred.dtype), y_pred.dtype)
    hinge = ops.relu(min_margin / 2.0 - sign * y_pred)
    positive_weight = ops.convert_to_tensor(y_pred.shape[-1] - 1.0, y_pred.dtype)
    return ops.mean(ops.where(ops.greater(sign, 0), hinge * positive_weight, hinge), axis=-1)


def _hkr(kr, hinge, alpha):
    # alpha = inf means hinge only; inf never enters an arithmetic branch, so
    # neither the value nor the gradient can become NaN.
    alpha = ops.convert_to_tensor(alpha)  # a keras.Variable: JAX's isinf/zeros_like take arrays only
    is_inf = ops.isinf(alpha)
    finite_alpha = ops.where(is_inf, ops.zeros_like(alpha), alpha)
    return ops.where(is_inf, hinge, -kr + ops.cast(finite_alpha, hinge.dtype) * hinge)


def process_labels_for_multi_gpu(labels: ArrayLike) -> Any:
    """Labels for KR losses with `multi_gpu=True` (deel-lip's helper).

    Each column becomes B * (y / n_pos - (1 - y) / (B - n_pos)) with y = 1[label == 1],
    so that the KR terms are per-sample and add up across replicas with
    `reduction="sum"`. Hinge terms only look at the sign, which is preserved.

    Args:
        labels: the whole batch's labels (B, C) (or (B,) for one output), in {0, 1} or {-1, 1},
            before it is split across replicas.

    Returns:
        Float labels of the same shape, for `KR`/`HKR`/... with `multi_gpu=True`.

    Examples:
        >>> y_multi = process_labels_for_multi_gpu(y_train)
    """
    labels = ops.convert_to_tensor(labels)
    dtype = labels.dtype if "float" in str(labels.dtype) else "float32"
    positive = ops.cast(ops.equal(ops.cast(labels, dtype), 1), dtype)
    batch_size = ops.cast(ops.shape(labels)[0], dtype)
    return batch_size * _kr_weights(positive, batch_size)


# ---------------------------------------------------------------- base class

_RELOAD = "Load the model with keras.saving.load_model(path, compile=False) and compile it again"


class _ParametrizedLoss(keras.losses.Loss):
    """A Loss whose float hyper-parameters live in non-trainable float32 variables.

    Subclasses list them in `_params`; `get_config` returns their current values.
    `_state` names those of them that are not constructor arguments (a schedule's
    progress): `from_config` assigns them after construction. A loss holding a
    live object of its model (a layer, a head, a callable reading weights) saves
    without it (`deel_lip_ext._saving.config_without`), and loading that config
    raises an error naming the fix.
    """

    _params = ()
    _state = ()

    @classmethod
    def from_config(cls, config: dict):
        config = dict(check_saved_whole(cls.__name__, config, _RELOAD))
        state = {name: config.pop(name) for name in cls._state if name in config}
        loss = cls(**config)
        for name, value in state.items():
            getattr(loss, name).assign(value)
        return loss

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


def nan_where_invalid(values: ArrayLike, valid: ArrayLike) -> Any:
    """`values` with NaN where `valid` is False: labels a compiled step cannot refuse by raising.

    TensorFlow and PyTorch raise on a class index outside [0, C); JAX's gather
    clamps or drops it and the sample would count as well classified. A NaN
    loss stops `fit` visibly (and `keras.callbacks.TerminateOnNaN`).

    Args:
        values: per-sample values (e.g. losses), a float tensor.
        valid: boolean tensor broadcasting against `values` (e.g. `class_index_is_valid`).
    """
    return ops.where(valid, values, ops.full_like(values, float("nan")))


def class_index_is_valid(labels: ArrayLike, num_classes: int) -> Any:
    """Boolean mask of the integer class indices `labels` in [0, num_classes).

    Args:
        labels: integer class indices, a tensor of any shape.
        num_classes: number of classes C.
    """
    return ops.logical_and(ops.greater_equal(labels, 0), ops.less(labels, num_classes))


def _check_nonnegative(name, value):
    return check_number(value, name, minimum=0, allow_inf=True)


def _check_positive(name, value):
    return check_number(value, name, minimum=0, strict=True)
