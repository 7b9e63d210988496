"""k-Lipschitz dense layers: `SpectralDense` (orthogonal) and `FrobeniusDense`."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import keras
from keras import ops
from numpy.typing import ArrayLike

from deel_lip_ext._validation import check_bool, check_int
from deel_lip_ext.layers.base import KernelBiasMixin, ParametrizedLayer, SpectralMixin
from deel_lip_ext.parametrizations import (
    DEFAULT_BETA_BJORCK,
    DEFAULT_EPS_BJORCK,
    DEFAULT_EPS_SPECTRAL,
    DEFAULT_MAXITER_BJORCK,
    DEFAULT_MAXITER_SPECTRAL,
    frobenius_normalization,
    on_gram_side,
)
from deel_lip_ext.spectrum import dense_sv_range

__all__ = ["SpectralDense", "FrobeniusDense"]


class LipschitzDenseBase(KernelBiasMixin, ParametrizedLayer):
    """Dense plumbing shared by the Lipschitz dense layers.

    Holds the raw `kernel` (input_dim, units) and the bias, applies
    `activation(x @ kernel_for_call + bias)` and exports to `keras.layers.Dense`.
    Subclasses only say how the raw kernel becomes the constrained one.
    """

    def __init__(
        self,
        units: int,
        activation: str | Callable | None = None,
        use_bias: bool = True,
        kernel_initializer: str | keras.initializers.Initializer = "orthogonal",
        bias_initializer: str | keras.initializers.Initializer = "zeros",
        kernel_regularizer: str | keras.regularizers.Regularizer | None = None,
        bias_regularizer: str | keras.regularizers.Regularizer | None = None,
        activity_regularizer: str | keras.regularizers.Regularizer | None = None,
        kernel_constraint: str | keras.constraints.Constraint | None = None,
        bias_constraint: str | keras.constraints.Constraint | None = None,
        k_coef_lip: float = 1.0,
        **kwargs: Any,
    ) -> None:
        super().__init__(activity_regularizer=activity_regularizer, **kwargs)
        self.units = check_int(units, "units")
        self._init_lipschitz(k_coef_lip)
        self._init_kernel_bias(
            activation,
            use_bias,
            kernel_initializer,
            bias_initializer,
            kernel_regularizer,
            bias_regularizer,
            kernel_constraint,
            bias_constraint,
        )
        self.input_spec = keras.layers.InputSpec(min_ndim=2)

    def build(self, input_shape: tuple[int | None, ...]) -> None:
        input_dim = input_shape[-1]
        if input_dim is None:
            raise ValueError(f"{self.__class__.__name__} needs a known last input dimension, got {input_shape}.")
        self._add_kernel_and_bias((input_dim, self.units), self.units)
        self.build_parametrization_state()
        self.build_kernel_cache((input_dim, self.units))
        self.input_spec = keras.layers.InputSpec(min_ndim=2, axes={-1: input_dim})

    def build_parametrization_state(self):
        """Create the non-trainable state of the parametrization (none by default)."""

    def call(self, inputs: ArrayLike, training: bool | None = None):
        outputs = ops.matmul(inputs, self.kernel_for_call(training))
        return self._bias_and_activation(outputs)

    def compute_output_shape(self, input_shape: tuple[int | None, ...]):
        return tuple(input_shape[:-1]) + (self.units,)

    def operator_norm(self, input_shape: tuple | None = None) -> float:
        """Largest singular value of the freshly computed constrained kernel (x -> x W on every row)."""
        return dense_sv_range(self.effective_kernel())[1]

    def plain_layers(self, kernel):
        dense = keras.layers.Dense(
            self.units, activation=self.activation, use_bias=self.use_bias, name=self.name, dtype=self.dtype_policy
        )
        dense.build((None, kernel.shape[0]))
        dense.set_weights(self._plain_weights(kernel))
        return [dense]

    def get_config(self) -> dict:
        config = super().get_config()
        config.update({"units": self.units, **self._kernel_bias_config()})
        return config


@keras.saving.register_keras_serializable(package="deel_lip_ext")
class SpectralDense(SpectralMixin, LipschitzDenseBase):
    """Dense layer with an orthogonal kernel scaled by `k_coef_lip`.

    The kernel is `k * Björck(W / sigma_max(W))`: every singular value is k
    (up to the Björck tolerance), so the layer is k-Lipschitz and, for
    k = 1, gradient-norm preserving. With `eps_bjorck=None` the Björck step is
    skipped (spectral normalization only: largest singular value k).

    A training call on fewer rows than the kernel has (a batch of 256 for a
    1568 x 64 kernel) multiplies them by the orthonormalization's two factors
    in turn and never forms the kernel (`reshaped_kernel_orthogonalization`):
    the same function, fewer multiply-adds. Inference multiplies by the kernel.

    Args:
        units: output dimension.
        activation: activation applied to the output (None by default). It
            counts in the layer's Lipschitz constant (`lipschitz_constant`,
            `deel_lip_ext.utils.model_lipschitz_bound`): a known
            `keras.activations` function multiplies it by its constant (1 for
            relu/tanh, 1.13 for gelu, ...); an unknown one (a user function,
            exponential) makes the bound raise `ValueError`.
        use_bias: whether to add a bias (it does not change the constant).
        kernel_initializer: initializer of the raw kernel. Orthogonal by
            default (Björck then starts converged; deel-lip's
            `SpectralInitializer` gives the same kernel direction).
        bias_initializer: initializer of the bias.
        kernel_regularizer: regularizer of the raw kernel.
        bias_regularizer: regularizer of the bias.
        activity_regularizer: regularizer of the output.
        kernel_constraint: constraint of the raw kernel.
        bias_constraint: constraint of the bias.
        k_coef_lip: Lipschitz constant of the layer.
        eps_spectral: power-iteration tolerance (0: exactly
            `maxiter_spectral` iterations).
        eps_bjorck: Björck tolerance (0: exactly `maxiter_bjorck` iterations;
            None: no Björck).
        beta_bjorck: Björck step in ]0, 0.5].
        maxiter_spectral: maximal number of power iterations.
        maxiter_bjorck: maximal number of Björck iterations.
        **kwargs: base `keras.layers.Layer` arguments (name, dtype, trainable, ...).

    Examples:
        >>> layer = SpectralDense(64, k_coef_lip=1.0)
        >>> y = layer(keras.random.normal((8, 32)))
        >>> plain = layer.vanilla_export()[0]  # a keras.layers.Dense
    """

    def __init__(
        self,
        units: int,
        activation: str | Callable | None = None,
        use_bias: bool = True,
        kernel_initializer: str | keras.initializers.Initializer = "orthogonal",
        bias_initializer: str | keras.initializers.Initializer = "zeros",
        kernel_regularizer: str | keras.regularizers.Regularizer | None = None,
        bias_regularizer: str | keras.regularizers.Regularizer | None = None,
        activity_regularizer: str | keras.regularizers.Regularizer | None = None,
        kernel_constraint: str | keras.constraints.Constraint | None = None,
        bias_constraint: str | keras.constraints.Constraint | None = None,
        k_coef_lip: float = 1.0,
        eps_spectral: float = DEFAULT_EPS_SPECTRAL,
        eps_bjorck: float | None = DEFAULT_EPS_BJORCK,
        beta_bjorck: float = DEFAULT_BETA_BJORCK,
        maxiter_spectral: int = DEFAULT_MAXITER_SPECTRAL,
        maxiter_bjorck: int = DEFAULT_MAXITER_BJORCK,
        **kwargs: Any,
    ) -> None:
        super().__init__(
            units,
            activation=activation,
            use_bias=use_bias,
            kernel_initializer=kernel_initializer,
            bias_initializer=bias_initializer,
            kernel_regularizer=kernel_regularizer,
            bias_regularizer=bias_regularizer,
            activity_regularizer=activity_regularizer,
            kernel_constraint=kernel_constraint,
            bias_constraint=bias_constraint,
            k_coef_lip=k_coef_lip,
            **kwargs,
        )
        self._init_spectral(eps_spectral, eps_bjorck, beta_bjorck, maxiter_spectral, maxiter_bjorck)

    def build_parametrization_state(self):
        self._build_power_iteration_vector(self.units)

    def kernel_dependencies(self):
        return [self.kernel, self.u]

    def compute_kernel(self):
        return self._spectral_kernel(self.k_coef_lip)

    def call(self, inputs: ArrayLike, training: bool | None = None):
        if not (training and self._multiplies_factors(inputs)):
            return super().call(inputs, training)
        (base, factor), updates = self._spectral_kernel(self.k_coef_lip, as_factors=True)
        self._store_state(updates)
        return self._bias_and_activation(ops.matmul(ops.matmul(inputs, base), factor))

    def _multiplies_factors(self, inputs):
        """Whether a training call multiplies `inputs` by the RKO's two factors in turn, not by their product.

        A kernel (m, n) with m >= 2n is orthonormalized on its Gram side and is `base @ factor`
        (`reshaped_kernel_orthogonalization(..., as_factors=True)`, factor (n, n)). Forming it costs
        m n^2 multiply-adds, and its gradient twice that; multiplying N rows by `factor` after
        `base` costs N n^2 (and twice that in the gradient): less when N < m. Only in float32,
        where the kernel the call multiplies with needs no rounding to the compute dtype (inference
        and exports multiply with the kernel itself, from the cache), and not for a subclass that
        computes its own kernel.
        """
        if self.eps_bjorck is None or self.compute_dtype != "float32":
            return False
        if type(self).compute_kernel is not SpectralDense.compute_kernel:
            return False
        rows, kernel_rows = inputs.shape[:-1], self.kernel.shape[0]
        if not on_gram_side(kernel_rows, self.units) or None in rows:
            return False
        return math.prod(rows) < kernel_rows

    def get_config(self) -> dict:
        config = super().get_config()
        config.update(self._spectral_config())
        return config


@keras.saving.register_keras_serializable(package="deel_lip_ext")
class FrobeniusDense(LipschitzDenseBase):
    """Dense layer whose kernel is divided by its Frobenius norm, times `k_coef_lip`.

    With `disjoint_neurons=True` (deel-lip's default) every output column is
    normalized on its own: each output is k-Lipschitz, the whole map is at
    most `k * sqrt(units)`-Lipschitz (certify its logits with margin / (2L)).
    With `disjoint_neurons=False` the whole layer is k-Lipschitz.

    Args:
        units: output dimension.
        activation: activation applied to the output (counts in the Lipschitz constant).
        use_bias: whether to add a bias.
        kernel_initializer: initializer of the raw kernel.
        bias_initializer: initializer of the bias.
        kernel_regularizer: regularizer of the raw kernel.
        bias_regularizer: regularizer of the bias.
        activity_regularizer: regularizer of the output.
        kernel_constraint: constraint of the raw kernel.
        bias_constraint: constraint of the bias.
        disjoint_neurons: normalize each output neuron separately.
        k_coef_lip: Lipschitz constant (per neuron when disjoint).
        **kwargs: base `keras.layers.Layer` arguments (name, dtype, trainable, ...).

    Examples:
        >>> head = FrobeniusDense(1)  # a 1-Lipschitz scalar output, e.g. for HKR
    """

    def __init__(
        self,
        units: int,
        activation: str | Callable | None = None,
        use_bias: bool = True,
        kernel_initializer: str | keras.initializers.Initializer = "orthogonal",
        bias_initializer: str | keras.initializers.Initializer = "zeros",
        kernel_regularizer: str | keras.regularizers.Regularizer | None = None,
        bias_regularizer: str | keras.regularizers.Regularizer | None = None,
        activity_regularizer: str | keras.regularizers.Regularizer | None = None,
        kernel_constraint: str | keras.constraints.Constraint | None = None,
        bias_constraint: str | keras.constraints.Constraint | None = None,
        disjoint_neurons: bool = True,
        k_coef_lip: float = 1.0,
        **kwargs: Any,
    ) -> None:
        super().__init__(
            units,
            activation=activation,
            use_bias=use_bias,
            kernel_initializer=kernel_initializer,
            bias_initializer=bias_initializer,
            kernel_regularizer=kernel_regularizer,
            bias_regularizer=bias_regularizer,
            activity_regularizer=activity_regularizer,
            kernel_constraint=kernel_constraint,
            bias_constraint=bias_constraint,
            k_coef_lip=k_coef_lip,
            **kwargs,
        )
        self.disjoint_neurons = check_bool(disjoint_neurons, "disjoint_neurons")

    def kernel_dependencies(self):
        return [self.kernel]

    def compute_kernel(self):
        kernel = frobenius_normalization(ops.cast(self.kernel, "float32"), self.disjoint_neurons)
        return kernel * self.k_coef_lip, []

    def lipschitz_by_construction(self) -> bool:
        # Disjoint neurons: each output is k-Lipschitz, the whole map up to k sqrt(units).
        return not self.disjoint_neurons or self.units == 1

    def get_config(self) -> dict:
        config = super().get_config()
        config["disjoint_neurons"] = self.disjoint_neurons
        return config
