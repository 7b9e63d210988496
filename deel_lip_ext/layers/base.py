"""Base classes shared by every Lipschitz layer.

Two ideas live here:

* `LipschitzLayer`: a layer that is `k_coef_lip`-Lipschitz by construction.
  Parameter-free layers (activations, pooling) simply scale their output by k.
* `ParametrizedLayer`: a layer whose kernel is a *function* of raw variables (the parametrization). The layer only holds
  variables, asks `compute_kernel()` for the constrained kernel and applies a plain op with it. `effective_kernel()` is
  the single source of truth used by training, inference, export, certification and tests, and `vanilla_export()` is one
  generic fold into stock Keras layers.

Inference uses a cached kernel that can never be stale: it keeps a snapshot of every variable the kernel depends
on and is recomputed whenever one differs (after a training step, `load_weights`, `set_weights`, an `assign` by
hand, ...). It is derived state: not a weight (not in `get_weights()`, not saved); loading a file invalidates it.
"""

from __future__ import annotations

import math

import keras
import numpy as np
from keras import ops
from numpy.typing import ArrayLike

from deel_lip_ext._validation import check_k_coef_lip
from deel_lip_ext.layers._bound_cache import BoundCache
from deel_lip_ext.layers._call_overrides import check_bounded_call
from deel_lip_ext.layers._kernel_cache import KernelCache
from deel_lip_ext.layers._layer_copies import built_input_shape, copied_with_weights
from deel_lip_ext.lipschitz import activation_lipschitz, check_bound_norm, half_unit_roundoff
from deel_lip_ext.parametrizations import check_normalizer_args, reshaped_kernel_orthogonalization
from deel_lip_ext.spectrum import dense_sv_range, linf_kernel_norm

__all__ = [
    "check_k_coef_lip",
    "built_input_shape",
    "check_bounded_call",
    "LipschitzBounded",
    "LipschitzLayer",
    "KernelCache",
    "ParametrizedLayer",
    "SpectralMixin",
    "KernelBiasMixin",
    "copied_with_weights",
]


class LipschitzBounded:
    """The Lipschitz protocol: every layer of the library answers `lipschitz_constant`.

    `lipschitz_constant(norm, input_shape)` is a provable upper bound (exact where possible) of the layer's Lipschitz
    constant for the "l2" or "linf" norm at that input shape, bias and activation included, or a `ValueError` saying
    that the layer has none for that norm and what to do. Every bound of the library
    (`deel_lip_ext.utils.model_lipschitz_bound`, certification, `deel_lip_ext.linf.linf_lipschitz_bound`,
    `deel_lip_ext.model.Sequential`'s check) asks this method; stock Keras layers are looked up in
    `deel_lip_ext.lipschitz.STOCK_LAYERS` instead.

    Subclasses implement `_lipschitz_constant(norm, input_shape)` (the default refuses); parametrized layers implement
    `operator_norm` instead (see `ParametrizedLayer`). A user subclass that overrides `call` must declare its own bound
    too, or it is refused (`check_bounded_call`).

    `infinite_weights` names the weights that hold an infinite value by design (an l_inf-dist
    layer's norm order p = inf); any other NaN or infinite weight makes every bound refuse
    (`deel_lip_ext.model_bound.check_finite_weights`).
    """

    infinite_weights: tuple[str, ...] = ()

    def lipschitz_constant(self, norm: str = "l2", input_shape: tuple | None = None) -> float:
        """Upper bound of the layer's Lipschitz constant for `norm` at `input_shape`.

        Args:
            norm: "l2" or "linf" (the same norm on inputs and outputs).
            input_shape: Keras input shape with the batch dimension (default:
                the shape the layer was built with).

        Returns:
            The bound, a float.

        Raises:
            ValueError: the layer has no known constant for this norm or shape
                (the message says what to do).

        Examples:
            >>> layer = SpectralDense(8, activation="tanh", k_coef_lip=2.0)
            >>> y = layer(np.ones((1, 4), "float32"))
            >>> layer.lipschitz_constant("l2")  # 2.0, up to float32 rounding
        """
        norm = check_bound_norm(norm)
        check_bounded_call(self)
        if input_shape is None:
            input_shape = built_input_shape(self)
        input_shape = None if input_shape is None else tuple(input_shape)
        if getattr(self, "_bound_cache", None) is None:
            self._bound_cache = BoundCache()
        return float(
            self._bound_cache.get_or_compute(self, norm, input_shape, lambda: self._finite_bound(norm, input_shape))
        )

    def _finite_bound(self, norm, input_shape):
        """`_lipschitz_constant`, refused where the kernel the (finite) weights give is not finite."""
        try:
            bound = float(self._lipschitz_constant(norm, input_shape))
        except np.linalg.LinAlgError as error:  # the spectrum of a NaN kernel does not converge
            raise self._diverged_error() from error
        if math.isnan(bound):
            raise self._diverged_error()
        return bound * (1.0 + half_unit_roundoff(getattr(self, "compute_dtype", ""))) ** self._rounded_constants()

    def _rounded_constants(self) -> int:
        """How many constants `call` multiplies by in series after rounding them to its compute dtype (k, a
        pooling's scale, cos and sin): each may round up by a unit roundoff, which the bound allows for under
        float16 or bfloat16. 0 by default: kernel layers bound their rounded kernel."""
        return 0

    def _diverged_error(self):
        return ValueError(
            f"layer {self.name!r}: the kernel its weights give is not finite (its parametrization diverged, e.g. "
            "a power-iteration state orthogonal to the top singular vector), so it has no Lipschitz bound. "
            "Re-initialize the layer's state or restore an earlier checkpoint before certifying."
        )

    def _lipschitz_constant(self, norm, input_shape):
        raise ValueError(
            f"layer {self.name!r} ({type(self).__name__}) has no known {norm} Lipschitz constant: "
            "pass the model's constant explicitly (lip_const=...) or use another layer."
        )


class LipschitzLayer(LipschitzBounded):
    """Mixin for layers that are `k_coef_lip`-Lipschitz (L2 norm) by construction.

    Subclasses call `self._init_lipschitz(k_coef_lip)` in `__init__` and put `k_coef_lip` in their config.
    `deel_lip_ext.model.Sequential` sets a share of a global constant on each of them with `set_klip_factor` before
    build. Their L2 constant is `k_coef_lip`; a subclass whose l_inf constant is known overrides `_lipschitz_constant`
    (the default refuses l_inf).
    """

    def _lipschitz_constant(self, norm, input_shape):
        if norm == "l2":
            return self.k_coef_lip
        return super()._lipschitz_constant(norm, input_shape)

    def _init_lipschitz(self, k_coef_lip):
        self.k_coef_lip = k_coef_lip  # checked by the setter

    @property
    def k_coef_lip(self) -> float:
        """The layer's Lipschitz constant: fixed once the layer is built, as its kernels and any traced
        function hold it (a model changes it with `deel_lip_ext.model.Sequential.set_klip_factor`)."""
        return self._k_coef_lip

    @k_coef_lip.setter
    def k_coef_lip(self, value: float):
        if getattr(self, "built", False):
            raise AttributeError(
                f"layer {self.name!r}: k_coef_lip is fixed once the layer is built (its cached kernels and compiled "
                "functions hold it). Pass it at construction, or use Sequential.set_klip_factor before the first fit."
            )
        self._k_coef_lip = check_k_coef_lip(value)

    def _set_built_k_coef_lip(self, k_coef_lip: float):
        """For `Sequential.set_klip_factor` only, which also drops the compiled functions that hold the constant."""
        self._k_coef_lip = check_k_coef_lip(k_coef_lip)
        if getattr(self, "_kernel_cache", None) is not None:
            self._kernel_cache.invalidate()

    def set_klip_factor(self, k_coef_lip: float):
        """Set the layer's Lipschitz constant (before the layer is built)."""
        if getattr(self, "built", False):
            raise RuntimeError(
                f"set_klip_factor must be called before layer {self.name!r} is built: "
                "compiled functions already use the current constant."
            )
        self.k_coef_lip = k_coef_lip  # checked by the setter

    def vanilla_export(self):
        """Plain layers computing the same function (a list, usually of one layer).

        Layers without a plain Keras equivalent export a copy of themselves, with a
        copy of their weights when they have any (e.g. `Householder`'s angles).
        """
        return [copied_with_weights(self)]


class ParametrizedLayer(LipschitzLayer, keras.layers.Layer):
    """A layer whose kernel is the image of raw variables by a parametrization.

    Subclasses implement:

    * `compute_kernel()` -> `(kernel, state_updates)`: the constrained kernel in float32 (already scaled by
      `k_coef_lip`) and a list of `(variable, new_value)` pairs of state to store after a training step (e.g. the
      power-iteration vector). Pure: it must not assign anything.
    * `kernel_dependencies()` -> the variables `compute_kernel` reads.
    * `plain_layers(kernel)` -> the stock Keras layers, built and with their
      weights set, computing the layer's function with the given kernel (a
      numpy array); used by `vanilla_export`.

    * `operator_norm(input_shape)` -> float: the exact (or a provable upper bound of the) L2 operator norm of the
      bias-free linear map the layer applies at that input shape (Keras shape with the batch dimension). This is the
      layer's whole part of the Lipschitz protocol: `lipschitz_constant` multiplies it by the activation's constant (the
      bias does not change the constant). The l_inf constant comes from the effective kernel (`linf_operator_norm`).

    and call `self.build_kernel_cache(kernel_shape)` at the end of `build`.
    """

    # Built by `build_kernel_cache`; derived state, see `KernelCache`.
    _kernel_cache = None
    # The kernel every call returns while a batch runs in parts (`batch_chunks.one_kernel`); None otherwise.
    _shared_kernel = None

    def operator_norm(self, input_shape: tuple | None = None) -> float:
        """Exact (or provable upper bound of the) L2 operator norm of the bias-free linear map at `input_shape`."""
        raise NotImplementedError(f"{type(self).__name__} must implement operator_norm(input_shape).")

    def singular_value_range(self, input_shape: tuple | None = None) -> tuple[float, float]:
        """(min, max) singular values of the bias-free linear map at `input_shape` (diagnostics, e.g. monitoring).

        The max is `operator_norm` (exact, or a certified upper bound); the
        min is exact for a dense kernel and 0 (unknown) otherwise. Layers that
        know their whole operator override this.
        """
        kernel = self.effective_kernel()
        if len(kernel.shape) == 2:
            return dense_sv_range(kernel)
        return 0.0, self.operator_norm(input_shape)

    def linf_operator_norm(self, input_shape: tuple | None = None) -> float:
        """Upper bound of the l_inf operator norm of the bias-free linear map, from the effective kernel.

        Valid for a layer that applies `x @ kernel` (2-D kernel) or a convolution with the kernel (4-D, any
        stride/padding, after a permutation such as `InvertibleDownSampling`): the largest absolute column sum of the
        kernel reshaped to (-1, c_out). Layers that use their kernel otherwise must override this method (or refuse).
        """
        kernel = self.effective_kernel()
        if len(kernel.shape) not in (2, 4):
            raise ValueError(
                f"layer {self.name!r}: no l_inf bound for a kernel of shape {tuple(kernel.shape)}; use norm='l2'."
            )
        return linf_kernel_norm(kernel)

    def activation_constant(self) -> float:
        """Lipschitz constant of the activation applied after the linear map (1: none)."""
        return 1.0

    def lipschitz_by_construction(self) -> bool:
        """Whether `k_coef_lip` times the activation's constant bounds the layer (L2) for EVERY raw value.

        False for a constraint that is partial (per output neuron), intermittent (a projection every N steps) or
        estimated (a power iteration): only the built bound (`lipschitz_constant`) then says what the layer is, and
        `deel_lip_ext.model.Sequential` warns.
        """
        return True

    def _lipschitz_constant(self, norm, input_shape):
        if not self.built:
            raise ValueError(f"layer {self.name!r} must be built before its Lipschitz constant can be computed.")
        linear = self.operator_norm(input_shape) if norm == "l2" else self.linf_operator_norm(input_shape)
        return float(linear) * self.activation_constant()

    def build_kernel_cache(self, kernel_shape: tuple) -> None:
        """Create the inference cache of a kernel of `kernel_shape` (call it at the end of `build`)."""
        with keras.name_scope(self.name, caller=self):
            self._kernel_cache = KernelCache(kernel_shape, self.kernel_dependencies())

    @property
    def variables(self) -> list:
        """All the layer's state: its weights plus the inference cache.

        The cache is state (JAX threads it through compiled steps like any
        non-trainable variable) but not a weight: it is absent from
        `weights`, `get_weights()` and checkpoints.
        """
        if self._kernel_cache is None:
            return super().variables
        return super().variables + self._kernel_cache.variables

    def load_own_variables(self, store) -> None:
        """Load the raw state and drop the inference cache, which is recomputed from it.

        Files written by releases that saved the cache after the raw state
        (indices `len(weights)` onwards) still load: the cache is ignored.
        """
        if self._kernel_cache is not None:
            own = len(self._trainable_variables) + len(self._non_trainable_variables)
            if len(store.keys()) == own + len(self._kernel_cache.variables):
                store = {str(i): store[str(i)] for i in range(own)}
            self._kernel_cache.invalidate()
        super().load_own_variables(store)

    def compute_kernel(self):
        raise NotImplementedError

    def kernel_dependencies(self):
        raise NotImplementedError

    def plain_layers(self, kernel: ArrayLike):
        raise NotImplementedError

    def effective_kernel(self):
        """The kernel the layer really multiplies with, freshly computed, as float32.

        The parametrization runs in float32; under a mixed precision policy the call multiplies with that kernel rounded
        to the compute dtype (float16, bfloat16), so this is the rounded kernel, cast back to float32 (exactly
        representable). Bounds, exports and `condense` all use it, so they describe the function that runs.
        """
        if not self.built:
            raise RuntimeError(f"Layer {self.name!r} must be built before its kernel exists.")
        return ops.cast(self._to_compute_dtype(self.compute_kernel()[0]), "float32")

    def kernel_for_call(self, training: bool | None = None):
        """Kernel to use in `call`: the float32 constrained kernel rounded to the compute dtype.

        Training recomputes it (with gradient) and stores the parametrization
        state; inference reads the cache, refreshed if any dependency changed.
        While a batch runs in parts, every call returns the kernel of the first (`batch_chunks.one_kernel`).
        """
        if self._shared_kernel is not None:
            return self._shared_kernel
        if training:
            kernel, updates = self.compute_kernel()
            self._store_state(updates)
        else:
            kernel = self._cached_or_fresh_kernel()
        return self._to_compute_dtype(kernel)

    @staticmethod
    def _store_state(updates):
        """Write the parametrization state a training call computed: (variable, new value) pairs."""
        for variable, value in updates:
            variable.assign(value)

    def _to_compute_dtype(self, kernel):
        return ops.cast(kernel, self.compute_dtype)

    def _cached_or_fresh_kernel(self):
        return self._kernel_cache.read_or_refresh(
            self.kernel_dependencies(), lambda: ops.stop_gradient(self.compute_kernel()[0])
        )

    def condense(self):
        """Overwrite the raw kernel with the constrained one (deel-lip semantics).

        Training restarts from a constrained kernel; the function changes only by the
        parametrization's tolerance (a kernel divided by an estimate of its norm is divided again).
        """
        self.kernel.assign(ops.cast(self.effective_kernel(), self.kernel.dtype))

    def vanilla_export(self):
        """Stock Keras layers with the constrained kernel folded in (freshly computed)."""
        return self.plain_layers(ops.convert_to_numpy(self.effective_kernel()))


class SpectralMixin:
    """Hyper-parameters and state of the spectral (power iteration + Björck) parametrization.

    Shared by `SpectralDense` and `SpectralConv2D`: the kernel, reshaped to a
    matrix (fan_in, units), is divided by its largest singular value and
    orthonormalized by Björck iterations (RKO).
    """

    def lipschitz_by_construction(self) -> bool:
        # Without Björck (eps_bjorck=None) the kernel is divided by a power-iteration estimate of its norm,
        # which may be below it (a state near the second singular vector): only the built bound holds.
        return self.eps_bjorck is not None and super().lipschitz_by_construction()

    def _init_spectral(self, eps_spectral, eps_bjorck, beta_bjorck, maxiter_spectral, maxiter_bjorck):
        check_normalizer_args(eps_spectral, eps_bjorck, beta_bjorck, maxiter_spectral, maxiter_bjorck)
        self.eps_spectral = eps_spectral
        self.eps_bjorck = eps_bjorck
        self.beta_bjorck = beta_bjorck
        self.maxiter_spectral = maxiter_spectral
        self.maxiter_bjorck = maxiter_bjorck

    def _build_power_iteration_vector(self, units):
        self.u = self.add_weight(
            name="u",
            shape=(1, units),
            initializer=keras.initializers.RandomNormal(0.0, 1.0),
            trainable=False,
            dtype="float32",
            autocast=False,
        )

    def _spectral_kernel(self, adjustment_coef, as_factors=False):
        """(kernel, [(u, new_u)]) of the RKO parametrization, in float32; with `as_factors`, ((base, factor),
        [(u, new_u)]) (see `reshaped_kernel_orthogonalization`)."""
        settings = (self.eps_spectral, self.eps_bjorck, self.beta_bjorck, self.maxiter_spectral, self.maxiter_bjorck)
        result, u, _ = reshaped_kernel_orthogonalization(
            ops.cast(self.kernel, "float32"), self.u, adjustment_coef, *settings, as_factors=as_factors
        )
        return result, [(self.u, u)]

    def _spectral_config(self):
        return {
            "eps_spectral": self.eps_spectral,
            "eps_bjorck": self.eps_bjorck,
            "beta_bjorck": self.beta_bjorck,
            "maxiter_spectral": self.maxiter_spectral,
            "maxiter_bjorck": self.maxiter_bjorck,
        }


class KernelBiasMixin:
    """Kernel/bias/activation plumbing shared by the dense and convolutional Lipschitz layers.

    The `activation` argument counts in the layer's Lipschitz constant: the constant of a known `keras.activations`
    function (looked up by identity in `deel_lip_ext.lipschitz.ACTIVATIONS`, e.g. 1.13 for gelu) multiplies the linear
    map's norm, and an unknown one (a user function, exponential, ...) makes `lipschitz_constant` raise `ValueError`.
    The layer itself accepts any activation.
    """

    def activation_constant(self) -> float:
        """Lipschitz constant of `self.activation` from the table, or `ValueError` if unknown."""
        return activation_lipschitz(self.activation, f"layer {self.name!r}")

    def _init_kernel_bias(
        self,
        activation,
        use_bias,
        kernel_initializer,
        bias_initializer,
        kernel_regularizer,
        bias_regularizer,
        kernel_constraint,
        bias_constraint,
    ):
        self.activation = keras.activations.get(activation)
        self.use_bias = use_bias
        self.kernel_initializer = keras.initializers.get(kernel_initializer)
        self.bias_initializer = keras.initializers.get(bias_initializer)
        self.kernel_regularizer = keras.regularizers.get(kernel_regularizer)
        self.bias_regularizer = keras.regularizers.get(bias_regularizer)
        self.kernel_constraint = keras.constraints.get(kernel_constraint)
        self.bias_constraint = keras.constraints.get(bias_constraint)

    def _add_kernel_and_bias(self, kernel_shape, units):
        self.kernel = self._add_raw_kernel(kernel_shape)
        self._add_bias(units)

    def _add_raw_kernel(self, shape, name="kernel"):
        """A trainable variable with the layer's kernel initializer, regularizer and constraint.

        Not autocast: under a mixed precision policy the parametrization reads
        it in its float32 variable dtype, and only the constrained kernel is
        rounded to the compute dtype (`ParametrizedLayer.kernel_for_call`).
        """
        return self.add_weight(
            name=name,
            shape=shape,
            initializer=self.kernel_initializer,
            regularizer=self.kernel_regularizer,
            constraint=self.kernel_constraint,
            autocast=False,
        )

    def _add_bias(self, units):
        self.bias = None
        if self.use_bias:
            self.bias = self.add_weight(
                name="bias",
                shape=(units,),
                initializer=self.bias_initializer,
                regularizer=self.bias_regularizer,
                constraint=self.bias_constraint,
            )

    def _bias_and_activation(self, outputs):
        if self.use_bias:
            outputs = outputs + self.bias
        return self.activation(outputs) if self.activation is not None else outputs

    def _plain_weights(self, kernel):
        """Weights of the exported stock layer: the folded kernel and a copy of the bias."""
        return [kernel] + ([ops.convert_to_numpy(self.bias)] if self.use_bias else [])

    def _kernel_bias_config(self):
        return {
            "activation": keras.activations.serialize(self.activation),
            "use_bias": self.use_bias,
            "kernel_initializer": keras.initializers.serialize(self.kernel_initializer),
            "bias_initializer": keras.initializers.serialize(self.bias_initializer),
            "kernel_regularizer": keras.regularizers.serialize(self.kernel_regularizer),
            "bias_regularizer": keras.regularizers.serialize(self.bias_regularizer),
            "kernel_constraint": keras.constraints.serialize(self.kernel_constraint),
            "bias_constraint": keras.constraints.serialize(self.bias_constraint),
            "k_coef_lip": self.k_coef_lip,
        }
