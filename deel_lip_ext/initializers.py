"""Initializers, deel-lip's names."""

from __future__ import annotations

import keras
from keras import ops

from deel_lip_ext import normalizers
from deel_lip_ext.layers.base import check_k_coef_lip

__all__ = ["SpectralInitializer"]


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
        eps_spectral: float = normalizers.DEFAULT_EPS_SPECTRAL,
        eps_bjorck: float | None = normalizers.DEFAULT_EPS_BJORCK,
        beta_bjorck: float = normalizers.DEFAULT_BETA_BJORCK,
        k_coef_lip: float = 1.0,
        base_initializer: str | keras.initializers.Initializer = "orthogonal",
    ) -> None:
        normalizers.check_normalizer_args(eps_spectral, eps_bjorck, beta_bjorck)
        self.eps_spectral = eps_spectral
        self.eps_bjorck = eps_bjorck
        self.beta_bjorck = beta_bjorck
        self.k_coef_lip = check_k_coef_lip(k_coef_lip)
        self.base_initializer = keras.initializers.get(base_initializer)

    def __call__(self, shape: tuple[int, ...], dtype: str | None = None):
        w = ops.cast(self.base_initializer(shape, dtype="float32"), "float32")
        u = keras.random.normal((1, shape[-1]), dtype="float32")
        kernel, _, _ = normalizers.reshaped_kernel_orthogonalization(
            w,
            u,
            adjustment_coef=self.k_coef_lip,
            eps_spectral=self.eps_spectral,
            eps_bjorck=self.eps_bjorck,
            beta=self.beta_bjorck,
            maxiter_spectral=normalizers.DEFAULT_MAXITER_SPECTRAL,
            maxiter_bjorck=normalizers.DEFAULT_MAXITER_BJORCK,
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
