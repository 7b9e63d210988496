"""Initializers: deel-lip's `SpectralInitializer` and `StackedOrthogonal` (orthogonal blocks of a stack)."""

from __future__ import annotations

import keras
from keras import ops

from deel_lip_ext import parametrizations
from deel_lip_ext._validation import check_k_coef_lip

__all__ = ["SpectralInitializer", "StackedOrthogonal"]


@keras.saving.register_keras_serializable(package="deel_lip_ext")
class SpectralInitializer(keras.initializers.Initializer):
    """A base initializer followed by RKO: the reshaped kernel has all singular values k.

    Args:
        eps_spectral: as in `SpectralDense`.
        eps_bjorck: as in `SpectralDense` (None: spectral normalization only).
        beta_bjorck: as in `SpectralDense`.
        k_coef_lip: target singular value.
        base_initializer: initializer drawn first ("orthogonal" by default).

    Examples:
        >>> keras.layers.Dense(8, kernel_initializer=SpectralInitializer())
    """

    def __init__(
        self,
        eps_spectral: float = parametrizations.DEFAULT_EPS_SPECTRAL,
        eps_bjorck: float | None = parametrizations.DEFAULT_EPS_BJORCK,
        beta_bjorck: float = parametrizations.DEFAULT_BETA_BJORCK,
        k_coef_lip: float = 1.0,
        base_initializer: str | keras.initializers.Initializer = "orthogonal",
    ) -> None:
        parametrizations.check_normalizer_args(eps_spectral, eps_bjorck, beta_bjorck)
        self.eps_spectral = eps_spectral
        self.eps_bjorck = eps_bjorck
        self.beta_bjorck = beta_bjorck
        self.k_coef_lip = check_k_coef_lip(k_coef_lip)
        self.base_initializer = keras.initializers.get(base_initializer)

    def __call__(self, shape: tuple[int, ...], dtype: str | None = None):
        w = ops.cast(self.base_initializer(shape, dtype="float32"), "float32")
        u = keras.random.normal((1, shape[-1]), dtype="float32")
        kernel, _, _ = parametrizations.reshaped_kernel_orthogonalization(
            w,
            u,
            adjustment_coef=self.k_coef_lip,
            eps_spectral=self.eps_spectral,
            eps_bjorck=self.eps_bjorck,
            beta=self.beta_bjorck,
            maxiter_spectral=parametrizations.DEFAULT_MAXITER_SPECTRAL,
            maxiter_bjorck=parametrizations.DEFAULT_MAXITER_BJORCK,
        )
        return ops.cast(kernel, dtype or "float32")

    def get_config(self) -> dict:
        return {
            "eps_spectral": self.eps_spectral,
            "eps_bjorck": self.eps_bjorck,
            "beta_bjorck": self.beta_bjorck,
            "k_coef_lip": self.k_coef_lip,
            "base_initializer": keras.initializers.serialize(self.base_initializer),
        }


@keras.saving.register_keras_serializable(package="deel_lip_ext")
class StackedOrthogonal(keras.initializers.Orthogonal):
    """Orthogonal initializer applied to each matrix of a stack (..., m, n) separately.

    `keras.initializers.Orthogonal` flattens all leading axes into one tall
    matrix, so the individual blocks of a stack are not orthogonal; BCOP needs
    each raw matrix orthogonal for its 20 Björck iterations to start converged.

    Args:
        gain: multiplicative factor.
        seed: int or `keras.random.SeedGenerator`.

    Examples:
        >>> stack = StackedOrthogonal(seed=0)((5, 8, 8))  # five 8 x 8 orthogonal matrices
    """

    def __init__(self, gain: float = 1.0, seed: int | None = None) -> None:
        super().__init__(gain=gain, seed=seed)

    def __call__(self, shape: tuple[int, ...], dtype: str | None = None):
        if len(shape) < 2:
            raise ValueError(f"StackedOrthogonal needs a shape of rank >= 2, got {shape}.")
        *batch, rows, cols = shape
        tall = (*batch, max(rows, cols), min(rows, cols))
        q, r = ops.qr(keras.random.normal(tall, seed=self.seed, dtype=dtype))
        # Sign fix of Q's columns: makes Q Haar-distributed, as in keras' Orthogonal.
        q = q * ops.expand_dims(ops.sign(ops.diagonal(r, axis1=-2, axis2=-1)), -2)
        if rows < cols:
            q = ops.swapaxes(q, -1, -2)
        return self.gain * q
