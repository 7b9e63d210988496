"""Argument checks shared by the whole package (modelled on `keras/src/utils/argument_validation.py`).

Every check returns the normalized value or raises `ValueError` naming the
argument, the allowed values and the value it got. A value of the wrong
*type* raises `ArgumentTypeError`, a `ValueError` like every other argument
error of the library (and also a `TypeError`, which some of these checks
raised before: code that caught it keeps working).

`name` is written as given, so a caller may pass a display form such as
"`batch_size`". Nothing here imports another module of the package.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence
from typing import Any

import keras
import numpy as np
from numpy.typing import ArrayLike

__all__ = [
    "ArgumentTypeError",
    "is_int",
    "is_real",
    "check_int",
    "check_number",
    "check_choice",
    "check_bool",
    "int_tuple",
    "int_pair",
    "check_channels_last",
    "check_k_coef_lip",
    "check_norm",
    "check_labels",
    "check_clip_range",
    "check_inside_box",
]

NORMS = ("l2", "linf")


class ArgumentTypeError(ValueError, TypeError):
    """An argument of the wrong type: a `ValueError` (as every argument error), also a `TypeError`."""


def is_int(value: Any) -> bool:
    """Whether `value` is an integer (Python or numpy), booleans excluded."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def is_real(value: Any) -> bool:
    """Whether `value` is a real number (Python or numpy), booleans excluded."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def check_int(value: Any, name: str, minimum: int = 1, allow_none: bool = False) -> int | None:
    """`value` as an int >= `minimum` (or None when `allow_none`), else `ValueError`."""
    if value is None and allow_none:
        return None
    if not is_int(value) or value < minimum:
        allowed = f"an integer >= {minimum}" + (" or None" if allow_none else "")
        raise ValueError(f"{name} must be {allowed}, got {value!r}.")
    return int(value)


def check_number(
    value: Any,
    name: str,
    minimum: float | None = None,
    maximum: float | None = None,
    strict: bool = False,
    allow_inf: bool = False,
    allow_none: bool = False,
) -> float | None:
    """`value` as a float in [minimum, maximum] (]minimum, ...] when `strict`), else `ValueError`.

    Args:
        value: the argument.
        name: its name, for the message.
        minimum: lower bound (None: none).
        maximum: upper bound (None: none).
        strict: exclude `minimum` itself.
        allow_inf: accept +inf (NaN never).
        allow_none: accept None (returned as is).

    Examples:
        >>> check_number(0.5, "momentum", minimum=0.0, maximum=1.0, strict=True)
        0.5
    """
    if value is None and allow_none:
        return None
    finite = "" if allow_inf else "finite "
    if not is_real(value) or math.isnan(value) or (math.isinf(value) and not (allow_inf and value > 0)):
        raise ValueError(f"{name} must be a {finite}number, got {value!r}.")
    if minimum is not None and (value < minimum or (strict and value == minimum)):
        raise ValueError(f"{name} must be a {finite}number {'>' if strict else '>='} {minimum}, got {value!r}.")
    if maximum is not None and value > maximum:
        raise ValueError(f"{name} must be a {finite}number <= {maximum}, got {value!r}.")
    return float(value)


def check_choice(value: Any, name: str, allowed: Sequence[Any]) -> Any:
    """`value` if it is one of `allowed`, else `ValueError` listing them."""
    if isinstance(value, (list, dict, set)) or value not in tuple(allowed):
        raise ValueError(f"{name} must be one of {tuple(allowed)}, got {value!r}.")
    return value


def check_bool(value: Any, name: str) -> bool:
    """`value` if it is True or False, else `ArgumentTypeError`."""
    if not isinstance(value, bool):
        raise ArgumentTypeError(f"{name} must be a bool (True or False), got {value!r}.")
    return value


def int_tuple(value: int | Sequence[int], rank: int, name: str, minimum: int = 1) -> tuple[int, ...]:
    """`value` (an int, or `rank` ints, each >= `minimum`) as a tuple of `rank` ints.

    Examples:
        >>> int_tuple(3, 2, "kernel_size")
        (3, 3)
    """
    values = (value,) * rank if is_int(value) else value
    if not (
        isinstance(values, (tuple, list)) and len(values) == rank and all(is_int(v) and v >= minimum for v in values)
    ):
        pair = "a pair of such ints" if rank == 2 else f"a tuple of {rank} such ints"
        raise ValueError(f"{name} must be an int >= {minimum} or {pair}, got {value!r}.")
    return tuple(int(v) for v in values)


def int_pair(value: int | Sequence[int], name: str, minimum: int = 1) -> tuple[int, int]:
    """`value` (an int or a pair of ints, each >= `minimum`) as a tuple `(height, width)`."""
    return int_tuple(value, 2, name, minimum)


def check_channels_last(data_format: str | None) -> str:
    """Return "channels_last", or raise `ValueError`: every layer of the library is channels-last.

    `None` means Keras's global `image_data_format()`.
    """
    resolved = keras.config.image_data_format() if data_format is None else data_format
    if resolved != "channels_last":
        raise ValueError(
            f"data_format must be 'channels_last' (or None with a channels-last global setting), "
            f"got {data_format!r} (resolved to {resolved!r}); deel-lip-ext layers are channels-last only."
        )
    return "channels_last"


def check_clip_range(clip_min: float | None, clip_max: float | None) -> tuple[float | None, float | None]:
    """`(clip_min, clip_max)`: numbers or None (unbounded), with clip_min < clip_max when both are given."""
    check_number(clip_min, "clip_min", allow_none=True)
    check_number(clip_max, "clip_max", allow_none=True)
    if clip_min is not None and clip_max is not None and clip_min >= clip_max:
        raise ValueError(f"clip_min must be < clip_max, got clip_min={clip_min!r}, clip_max={clip_max!r}.")
    return clip_min, clip_max


def check_inside_box(x: np.ndarray, clip_min: float | None, clip_max: float | None) -> None:
    """`ValueError` naming the first sample of `x` outside [clip_min, clip_max] (None: unbounded) and the fix.

    Attacks and interval bounds work in the box: for a point outside it, the clipped ball is a ball
    around another point (an attack returned points farther than eps from x).
    """
    low = -np.inf if clip_min is None else clip_min
    high = np.inf if clip_max is None else clip_max
    outside = np.flatnonzero(np.any((x < low) | (x > high), axis=tuple(range(1, x.ndim))))
    if outside.size:
        raise ValueError(
            f"x: {outside.size} samples (the first: {outside[0]}) lie outside [clip_min, clip_max] = "
            f"[{clip_min}, {clip_max}]: give the range the inputs live in (e.g. clip_max=255 for raw pixels) "
            "or None for an unbounded one."
        )


def check_k_coef_lip(k_coef_lip: float) -> float:
    """Return `k_coef_lip` as a float, or raise `ValueError` if it is not > 0 and finite."""
    if isinstance(k_coef_lip, str):
        raise ValueError(
            f"k_coef_lip must be a positive number, got {k_coef_lip!r}: deel-lip's GroupSort(n, data_format) takes "
            "data_format second; here k_coef_lip comes second, so pass data_format=... by keyword "
            "(docs/migration.md)."
        )
    if not is_real(k_coef_lip):
        raise ValueError(f"k_coef_lip must be a positive number, got {k_coef_lip!r}.")
    if not math.isfinite(float(k_coef_lip)) or k_coef_lip <= 0:
        raise ValueError(f"k_coef_lip must be a positive finite number, got {k_coef_lip!r}.")
    return float(k_coef_lip)


def check_norm(norm: str, name: str = "norm") -> str:
    """Return `norm` ("l2" or "linf"), or raise `ValueError` naming the accepted values."""
    return check_choice(norm, name, NORMS)


def check_labels(logits: ArrayLike, labels: ArrayLike):
    """Validate labels against `(N, C)` logits and return them as a float target array.

    Accepted: integer class indices `(N,)` / `(N, 1)` or one-hot `(N, C)` with
    values in {0, 1} or {-1, 1} when C > 1; labels in {0, 1} or {-1, 1} of
    shape `(N,)` / `(N, 1)` when C == 1. The result has shape `(N, C)`: a
    one-hot (or +-1) target for C > 1, the labels themselves for C == 1.
    """
    logits_shape = tuple(np.shape(logits))
    if len(logits_shape) != 2:
        raise ValueError(f"logits must have shape (N, C), got shape {logits_shape}.")
    n, num_classes = logits_shape
    labels = np.asarray(labels)
    if labels.ndim == 2 and labels.shape[1] == 1:
        labels = labels[:, 0]
    if labels.shape[0:1] != (n,) or labels.ndim not in (1, 2):
        raise ValueError(
            f"labels must have shape ({n},), ({n}, 1) or ({n}, {num_classes}) to match logits of "
            f"shape {logits_shape}, got shape {np.shape(labels)}."
        )
    if labels.ndim == 2:
        if labels.shape[1] != num_classes:
            raise ValueError(
                f"labels must have shape ({n},), ({n}, 1) or ({n}, {num_classes}) to match logits of "
                f"shape {logits_shape}, got shape {labels.shape}."
            )
        if not np.all(np.isin(labels, (-1, 0, 1))) or np.any(np.sum(labels > 0, axis=1) != 1):
            raise ValueError("one-hot labels must hold exactly one positive entry per row, in {0, 1} or {-1, 1}.")
        return labels.astype("float32")
    if num_classes == 1:
        if not np.all(np.isin(labels, (-1, 0, 1))):
            raise ValueError(
                "binary labels (single-logit model) must be in {0, 1} or {-1, 1}, "
                f"got values {np.unique(labels)[:5]}."
            )
        return labels.astype("float32").reshape(n, 1)
    if not np.all(np.equal(np.mod(labels, 1), 0)) or np.any(labels < 0) or np.any(labels >= num_classes):
        raise ValueError(
            f"integer labels must be class indices in [0, {num_classes}), got values {np.unique(labels)[:5]}."
        )
    return np.eye(num_classes, dtype="float32")[labels.astype("int64")]
