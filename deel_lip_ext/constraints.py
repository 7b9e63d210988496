"""Weight constraints (applied after each optimizer update), deel-lip's names.

A constraint projects a plain layer's kernel; unlike the parametrized layers
it does not differentiate through the normalization.
"""

from __future__ import annotations

import math

import keras
import numpy as np
from keras import ops
from numpy.typing import ArrayLike

from deel_lip_ext import parametrizations
from deel_lip_ext._validation import check_k_coef_lip, check_number

__all__ = ["WeightClipConstraint", "AutoWeightClipConstraint", "FrobeniusConstraint", "SpectralConstraint"]


@keras.saving.register_keras_serializable(package="deel_lip_ext")
class WeightClipConstraint(keras.constraints.Constraint):
    """Clip every weight to [-c, c].

    Args:
        c: clipping bound.

    Examples:
        >>> keras.layers.Dense(8, kernel_constraint=WeightClipConstraint(0.1))
    """

    def __init__(self, c: float = 2.0) -> None:
        self.c = check_number(c, "c", minimum=0, strict=True)

    def __call__(self, w: ArrayLike):
        return ops.clip(w, -self.c, self.c)

    def get_config(self) -> dict:
        return {"c": self.c}


@keras.saving.register_keras_serializable(package="deel_lip_ext")
class AutoWeightClipConstraint(keras.constraints.Constraint):
    """Clip every weight to +-1 / (sqrt(number of weights) * scale) (deel-lip).

    Args:
        scale: extra divisor of the bound.

    Examples:
        >>> keras.layers.Dense(8, kernel_constraint=AutoWeightClipConstraint())
    """

    def __init__(self, scale: float = 1.0) -> None:
        self.scale = check_number(scale, "scale", minimum=0, strict=True)

    def __call__(self, w):
        # The static shape: a Python number, also while `fit` traces the constraint symbolically.
        bound = 1.0 / (self.scale * math.sqrt(math.prod(int(dim) for dim in w.shape)))
        return ops.clip(w, -bound, bound)

    def get_config(self) -> dict:
        return {"scale": self.scale}


@keras.saving.register_keras_serializable(package="deel_lip_ext")
class FrobeniusConstraint(keras.constraints.Constraint):
    """Divide the kernel by its Frobenius norm: `w / (||w||_F + eps)`.

    Args:
        eps: added to the norm.

    Examples:
        >>> keras.layers.Dense(1, kernel_constraint=FrobeniusConstraint())
    """

    def __init__(self, eps: float = 1e-7) -> None:
        self.eps = float(eps)

    def __call__(self, w: ArrayLike):
        return w / (ops.sqrt(ops.sum(ops.square(w))) + self.eps)

    def get_config(self) -> dict:
        return {"eps": self.eps}


@keras.saving.register_keras_serializable(package="deel_lip_ext")
class SpectralConstraint(keras.constraints.Constraint):
    """Project the reshaped kernel onto k times the orthogonal matrices (RKO) after each update.

    The power iteration starts from `u` when given (deel-lip's argument),
    else from a fresh random vector each time (the constraint does not keep
    the vector it finds), and runs at most `maxiter_spectral` iterations.

    Args:
        k_coef_lip: target spectral norm.
        eps_spectral: as in `SpectralDense`.
        eps_bjorck: as in `SpectralDense` (None: spectral normalization only).
        beta_bjorck: as in `SpectralDense`; None also skips Björck (deel-lip).
        maxiter_spectral: as in `SpectralDense`.
        maxiter_bjorck: as in `SpectralDense`.
        u: start vector of the power iteration, shape (1, units) (deel-lip),
            or None for a random start at each call.

    Examples:
        >>> keras.layers.Dense(8, kernel_constraint=SpectralConstraint(k_coef_lip=1.0))
    """

    def __init__(
        self,
        k_coef_lip: float = 1.0,
        eps_spectral: float = parametrizations.DEFAULT_EPS_SPECTRAL,
        eps_bjorck: float | None = parametrizations.DEFAULT_EPS_BJORCK,
        beta_bjorck: float | None = parametrizations.DEFAULT_BETA_BJORCK,
        maxiter_spectral: int = parametrizations.DEFAULT_MAXITER_SPECTRAL,
        maxiter_bjorck: int = parametrizations.DEFAULT_MAXITER_BJORCK,
        u: ArrayLike | None = None,
    ) -> None:
        # deel-lip: beta_bjorck=None, like eps_bjorck=None, means no Björck (checked as such).
        checked_beta = parametrizations.DEFAULT_BETA_BJORCK if beta_bjorck is None else beta_bjorck
        parametrizations.check_normalizer_args(eps_spectral, eps_bjorck, checked_beta, maxiter_spectral, maxiter_bjorck)
        if u is not None:
            u = np.asarray(ops.convert_to_numpy(u), dtype="float32")
            if u.ndim != 2 or u.shape[0] != 1:
                raise ValueError(f"u must be None or a start vector of shape (1, units), got shape {u.shape}.")
        self.u = u
        self.k_coef_lip = check_k_coef_lip(k_coef_lip)
        self.eps_spectral = eps_spectral
        self.eps_bjorck = eps_bjorck
        self.beta_bjorck = beta_bjorck
        self.maxiter_spectral = maxiter_spectral
        self.maxiter_bjorck = maxiter_bjorck

    def __call__(self, w: ArrayLike):
        if self.u is None:
            u = keras.random.normal((1, w.shape[-1]), dtype="float32", seed=0)  # traced JAX takes seeded ops only
        elif self.u.shape[1] != w.shape[-1]:
            raise ValueError(
                f"u has shape {self.u.shape}, the kernel has {w.shape[-1]} units: give u of shape (1, units)."
            )
        else:
            u = ops.convert_to_tensor(self.u)
        kernel, _, _ = parametrizations.reshaped_kernel_orthogonalization(
            ops.cast(w, "float32"),
            u,
            adjustment_coef=self.k_coef_lip,
            eps_spectral=self.eps_spectral,
            eps_bjorck=self.eps_bjorck,
            beta=self.beta_bjorck,
            maxiter_spectral=self.maxiter_spectral,
            maxiter_bjorck=self.maxiter_bjorck,
        )
        return ops.cast(kernel, w.dtype)

    def get_config(self) -> dict:
        return {
            "k_coef_lip": self.k_coef_lip,
            "eps_spectral": self.eps_spectral,
            "eps_bjorck": self.eps_bjorck,
            "beta_bjorck": self.beta_bjorck,
            "maxiter_spectral": self.maxiter_spectral,
            "maxiter_bjorck": self.maxiter_bjorck,
            "u": None if self.u is None else self.u.tolist(),
        }
