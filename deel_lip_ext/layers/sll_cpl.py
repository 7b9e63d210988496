"""1-Lipschitz residual layers: SLL (Araujo et al., ICLR 2023) and CPL (Meunier et al., ICML 2022).

Both compute h(x) = x - P^T (s * relu(P x + b)) with P the linear map x -> x K (dense) or the stride-1
convolution with K (conv; P^T is then the convolution with the flipped, channel-swapped kernel), and a
positive factor s per hidden channel:

* SLL: s = 2 / (t + eps), t_i = sum_j |P P^T|_ij q_j / q_i with trainable q = exp(log_q);
* CPL: s = 2 / (sigma^2 + eps), sigma an upper bound of ||P||_2: in value the larger of a power-iteration estimate
  (persistent vector; it carries the gradient) and a Gram-iteration bound (`deel_lip_ext.parametrizations.
  norm_bounds`, at the build input size for convolutions), so s ||P||^2 <= 2 at every step.

Certificate (what `lipschitz_constant` computes, for the weights as they are, rounded to the compute dtype):
the Jacobian is J = I - B D B^T with B = P^T S^(1/2) and D = diag(relu') in [0, 1], so the eigenvalues of
the symmetric J lie in [1 - ||B||^2, 1] and ||J||_2 <= max(1, ||B||_2^2 - 1). ||B||_2 is bounded from above
(exact dense SVD, exact/upper conv operator norm from `deel_lip_ext.spectrum.conv_sv_range`, or a weighted
Gershgorin bound, whichever is smaller); no power-iteration estimate enters the certificate. For SLL,
||B||^2 <= 2 max_i t_i / (t_i + eps) < 2 (Gershgorin with the weights q / sqrt(s)), so the bound is 1; for CPL
||B||^2 = 2 ||P||^2 / (sigma^2 + eps) <= 2 since sigma >= ||P||, so the bound is 1 as well (the certificate
recomputes ||P|| in float64 and shows any excess, e.g. from rounding s and K to float16 under mixed precision).

For convolutions the Gershgorin bound holds for zero ("same") and circular padding: P P^T is (a principal
sub-matrix of, after E E^T <= I for zero padding) the circular Gram on a large enough torus, whose entries are
(sums of) the kernel's self-correlation entries.
"""

from __future__ import annotations

from typing import Any

import keras
import numpy as np
from keras import ops
from numpy.typing import ArrayLike

from deel_lip_ext._validation import check_choice, check_int, check_number, int_pair
from deel_lip_ext.layers.base import LipschitzBounded, built_input_shape
from deel_lip_ext.layers.conv_base import ConvGeometry
from deel_lip_ext.parametrizations import (
    adjoint_conv_kernel,
    conv_with_padding,
    sll_scale,
)
from deel_lip_ext.spectrum import conv_sv_range, dense_sv_range

__all__ = ["SLLDense", "SLLConv2D"]

RESIDUAL_PADDINGS = ("same", "circular")


def _gram_row_sums_float64(kernel: np.ndarray, weights: np.ndarray | None) -> np.ndarray:
    """`parametrizations.gram_row_sums` of a numpy kernel, in float64 numpy, for the certificate.

    `keras.ops` cannot be used here: Keras promotes float64 to float32 on JAX and torch (its
    `result_type` maps 64-bit types to 32-bit types on every backend but TensorFlow), and a float32 sum
    rounds the bound by more than SLL's margin 2 eps / (t + eps) below 2.
    """
    if kernel.ndim == 2:
        absolute = np.abs(kernel @ kernel.T)
    else:
        kh, kw, n, _ = kernel.shape
        absolute = np.zeros((n, n))
        for du in range(1 - kh, kh):
            for dv in range(1 - kw, kw):
                a, b = slice(max(0, -du), min(kh, kh - du)), slice(max(0, -dv), min(kw, kw - dv))
                shifted = kernel[a.start + du : a.stop + du, b.start + dv : b.stop + dv]
                absolute += np.abs(np.einsum("abio,abjo->ij", shifted, kernel[a, b]))
    if weights is None:
        return absolute.sum(axis=1)
    return absolute @ weights / weights


class ResidualLipschitzBase(LipschitzBounded, keras.layers.Layer):
    """Plumbing of the residual layers h(x) = x - P^T (s * relu(P x + b)) (see the module docstring).

    Subclasses say how the factor s (one per hidden channel, float32) is computed: `scale(training)` returns
    `(s, state_updates)`, and `gershgorin_weights()` the positive weights of their Gershgorin bound.
    """

    def __init__(
        self,
        units: int,
        use_bias: bool,
        kernel_initializer: str | keras.initializers.Initializer,
        bias_initializer: str | keras.initializers.Initializer,
        eps: float,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.units = check_int(units, "units" if self._is_dense else "filters")
        self.use_bias = bool(use_bias)
        self.kernel_initializer = keras.initializers.get(kernel_initializer)
        self.bias_initializer = keras.initializers.get(bias_initializer)
        self.eps = check_number(eps, "eps", minimum=0, strict=True)

    _is_dense = True

    # --- the linear map P and its adjoint -------------------------------------------------------------
    def apply_p(self, x, kernel):
        """P x."""
        return ops.matmul(x, kernel)

    def apply_p_adjoint(self, z, kernel):
        """P^T z."""
        return ops.matmul(z, ops.transpose(kernel))

    def kernel_shape(self, input_shape):
        return (input_shape[-1], self.units)

    def check_build_shape(self, input_shape: tuple) -> None:
        """Refuse input shapes the map P cannot handle (none by default)."""

    def build(self, input_shape: tuple[int | None, ...]) -> None:
        self.check_build_shape(input_shape)
        if input_shape[-1] is None:
            raise ValueError(f"{type(self).__name__} needs a known channel dimension, got {input_shape}.")
        self.kernel = self.add_weight(
            name="kernel", shape=self.kernel_shape(input_shape), initializer=self.kernel_initializer, autocast=False
        )
        self.bias = None
        if self.use_bias:
            self.bias = self.add_weight(name="bias", shape=(self.units,), initializer=self.bias_initializer)
        self.build_scale_state(input_shape)

    def build_scale_state(self, input_shape):
        """Create the factor's state (none by default)."""

    def scale(self, training: bool | None = False):
        raise NotImplementedError

    def gershgorin_weights(self, factor: np.ndarray):
        """Positive weights (one per hidden channel) of the Gershgorin bound of ||B||^2, or None (all ones).

        Any positive weights give a valid bound; `factor` is the effective s.
        """
        return None

    def call(self, inputs: ArrayLike, training: bool | None = None):
        factor, updates = self.scale(training=bool(training))
        if training:
            for variable, value in updates:
                variable.assign(value)
        kernel = ops.cast(self.kernel, self.compute_dtype)
        hidden = self.apply_p(inputs, kernel)
        if self.use_bias:
            hidden = hidden + self.bias
        hidden = ops.relu(hidden) * ops.cast(factor, self.compute_dtype)
        return inputs - self.apply_p_adjoint(hidden, kernel)

    def compute_output_shape(self, input_shape: tuple[int | None, ...]):
        return tuple(input_shape)

    def effective_weights(self) -> tuple[np.ndarray, np.ndarray]:
        """(kernel, factor) as the layer multiplies with them: rounded to the compute dtype, as float32 numpy."""
        if not self.built:
            raise RuntimeError(f"Layer {self.name!r} must be built before its weights exist.")

        def rounded(value):
            return ops.convert_to_numpy(ops.cast(ops.cast(value, self.compute_dtype), "float32"))

        return rounded(self.kernel), rounded(self.scale(training=False)[0])

    def _b_norm_squared(self, input_shape):
        """Upper bound of ||P^T S^(1/2)||_2^2 for the effective weights (float64)."""
        kernel, factor = self.effective_weights()
        scaled = kernel.astype(np.float64) * np.sqrt(factor.astype(np.float64))
        weights = self.gershgorin_weights(factor.astype(np.float64))
        rows = _gram_row_sums_float64(np.swapaxes(scaled, -1, -2), weights)
        gershgorin = float(np.max(rows))
        return min(gershgorin, self._operator_norm(scaled, input_shape) ** 2)

    def _operator_norm(self, scaled, input_shape):
        return dense_sv_range(scaled)[1]

    def _lipschitz_constant(self, norm, input_shape):
        if norm != "l2":
            raise ValueError(
                f"layer {self.name!r} ({type(self).__name__}) is 1-Lipschitz for the L2 norm only; its l_inf "
                "constant is not known: use norm='l2' or l_inf-distance layers (LInfDistDense)."
            )
        if not self.built:
            # By construction for every kernel (SLL: diag(t + eps) - P P^T is PSD; CPL: s ||P||^2 <= 2 since s
            # divides by an upper bound of ||P||); built: checked on the weights as they are.
            return 1.0
        return max(1.0, self._b_norm_squared(input_shape) - 1.0)

    # --- export ------------------------------------------------------------------------------------------
    def plain_hidden_layers(self, kernel, bias, factor):
        """Stock layers computing P x + b and P^T (s z)."""
        first = keras.layers.Dense(self.units, use_bias=self.use_bias, name=f"{self.name}_in", dtype=self.dtype_policy)
        first.build((None, kernel.shape[0]))
        first.set_weights([kernel] + ([bias] if self.use_bias else []))
        second = keras.layers.Dense(kernel.shape[0], use_bias=False, name=f"{self.name}_out", dtype=self.dtype_policy)
        second.build((None, self.units))
        second.set_weights([np.transpose(kernel * factor)])
        return [first], [second]

    def vanilla_export(self) -> list:
        """A functional `keras.Model` of stock layers (Dense/Conv2D, ReLU, Subtract) computing the same function."""
        kernel, factor = self.effective_weights()
        bias = None if self.bias is None else ops.convert_to_numpy(self.bias)
        into, back = self.plain_hidden_layers(kernel, bias, factor)
        shape = built_input_shape(self)
        inputs = keras.Input(batch_shape=shape, dtype=self.compute_dtype)
        x = inputs
        for layer in into:
            x = layer(x)
        x = keras.layers.ReLU(name=f"{self.name}_relu", dtype=self.dtype_policy)(x)
        for layer in back:
            x = layer(x)
        outputs = keras.layers.Subtract(name=f"{self.name}_subtract", dtype=self.dtype_policy)([inputs, x])
        return [keras.Model(inputs, outputs, name=self.name)]

    def get_config(self) -> dict:
        config = super().get_config()
        config.update(
            {
                "units" if self._is_dense else "filters": self.units,
                "use_bias": self.use_bias,
                "kernel_initializer": keras.initializers.serialize(self.kernel_initializer),
                "bias_initializer": keras.initializers.serialize(self.bias_initializer),
                "eps": self.eps,
            }
        )
        return config


class ResidualConvMixin:
    """Stride-1 convolution P ("same" zero or circular padding, odd kernel) and its adjoint."""

    _is_dense = False

    def _init_conv(self, kernel_size, padding):
        self.kernel_size = int_pair(kernel_size, "kernel_size")
        if any(k % 2 == 0 for k in self.kernel_size):
            raise ValueError(f"kernel_size must be odd (the adjoint is then a 'same' conv), got {kernel_size!r}.")
        self.padding = check_choice(padding, "padding", RESIDUAL_PADDINGS)

    def kernel_shape(self, input_shape):
        return (*self.kernel_size, input_shape[-1], self.units)

    def apply_p(self, x, kernel):
        return conv_with_padding(x, kernel, self.padding)

    def apply_p_adjoint(self, z, kernel):
        return conv_with_padding(z, adjoint_conv_kernel(kernel), self.padding)

    def geometry(self):
        """The stride-1 convolution P: "same" zero padding, or a circular pad then a valid conv."""
        return ConvGeometry(self.kernel_size, (1, 1), self.padding)

    def check_build_shape(self, input_shape):
        if self.padding == "circular" and None in tuple(input_shape)[1:3]:
            raise ValueError(
                f"padding='circular' needs known spatial dimensions >= kernel_size // 2, got {input_shape}."
            )
        self.geometry().check_input(tuple(input_shape), self.name)

    def _operator_norm(self, scaled, input_shape):
        shape = tuple(input_shape)[1:3] if input_shape is not None else (None, None)
        return conv_sv_range(scaled, (*shape, scaled.shape[2]), (1, 1), self.padding)[1]

    def plain_hidden_layers(self, kernel, bias, factor):
        adjoint = ops.convert_to_numpy(adjoint_conv_kernel(ops.convert_to_tensor(kernel * factor)))
        geometry = self.geometry()

        def conv(filters, weights, name):
            def stock():
                return geometry.stock_conv(filters, None, len(weights) > 1, name, self.dtype_policy)

            layers = geometry.plain_layers(name, (None, None, None, weights[0].shape[2]), stock, self.dtype_policy)
            layers[-1].set_weights(weights)
            return layers

        into = conv(self.units, [kernel] + ([bias] if self.use_bias else []), f"{self.name}_in")
        return into, conv(kernel.shape[2], [adjoint], f"{self.name}_out")

    def _conv_config(self):
        return {"kernel_size": self.kernel_size, "padding": self.padding}


class _SLLMixin:
    def build_scale_state(self, input_shape):
        self.log_q = self.add_weight(name="log_q", shape=(self.units,), initializer="zeros", autocast=False)

    def scale(self, training: bool | None = False):
        return sll_scale(ops.cast(self.kernel, "float32"), self.log_q, self.eps), []

    def gershgorin_weights(self, factor):
        # w = q / sqrt(s): the weighted row sums of S^1/2 |P P^T| S^1/2 are then s_i t_i = 2 t_i / (t_i + eps) < 2.
        return np.exp(ops.convert_to_numpy(self.log_q).astype(np.float64)) / np.sqrt(factor)


@keras.saving.register_keras_serializable(package="deel_lip_ext")
class SLLDense(_SLLMixin, ResidualLipschitzBase):
    """SDP-based Lipschitz residual layer (SLL), dense: x - 2 W T^-1 relu(W^T x + b) in Keras layout.

    Computes `x - (s * relu(x K + b)) K^T` with s = 2 / (t + eps), t_i = sum_j |K^T K|_ij q_j / q_i and trainable
    q = exp(log_q): 1-Lipschitz (L2) for every kernel and q. Exports to a functional block of Dense, ReLU, Subtract.

    Args:
        units: number of hidden units.
        use_bias: whether to add a bias to the hidden units.
        kernel_initializer: initializer of the kernel (input_dim, units).
        bias_initializer: initializer of the bias.
        eps: positive number added to t (SLL diverges without it when some t_i is ~0).
        **kwargs: base `keras.layers.Layer` arguments (name, dtype).

    Examples:
        >>> layer = SLLDense(32)
        >>> y = layer(keras.random.normal((4, 16)))  # same shape as the input
        >>> block = layer.vanilla_export()[0]  # a functional keras.Model of stock layers
    """

    def __init__(
        self,
        units: int,
        use_bias: bool = True,
        kernel_initializer: str | keras.initializers.Initializer = "glorot_uniform",
        bias_initializer: str | keras.initializers.Initializer = "zeros",
        eps: float = 1e-6,
        **kwargs: Any,
    ) -> None:
        super().__init__(units, use_bias, kernel_initializer, bias_initializer, eps, **kwargs)


@keras.saving.register_keras_serializable(package="deel_lip_ext")
class SLLConv2D(_SLLMixin, ResidualConvMixin, ResidualLipschitzBase):
    """Convolutional SLL layer: x - P^T (s * relu(P x + b)), P the stride-1 conv with the kernel.

    s = 2 / (t + eps) per hidden channel, t from the kernel's self-correlation over the input channels weighted
    by q = exp(log_q). 1-Lipschitz (L2) for every kernel, "same" or circular padding and input size. Exports to
    a functional block of Conv2D (after CircularPadding2D when circular), ReLU, Conv2D (the adjoint), Subtract.

    Args:
        filters: number of hidden channels.
        kernel_size: odd int or pair of odd ints.
        padding: "same" (zero) or "circular".
        use_bias: whether to add a bias to the hidden channels.
        kernel_initializer: initializer of the kernel (kh, kw, channels, filters).
        bias_initializer: initializer of the bias.
        eps: positive number added to t.
        **kwargs: base `keras.layers.Layer` arguments (name, dtype).

    Examples:
        >>> layer = SLLConv2D(32, 3)
        >>> y = layer(keras.random.normal((2, 16, 16, 8)))  # same shape as the input
    """

    def __init__(
        self,
        filters: int,
        kernel_size: int | tuple[int, int] = 3,
        padding: str = "same",
        use_bias: bool = True,
        kernel_initializer: str | keras.initializers.Initializer = "glorot_uniform",
        bias_initializer: str | keras.initializers.Initializer = "zeros",
        eps: float = 1e-6,
        **kwargs: Any,
    ) -> None:
        super().__init__(filters, use_bias, kernel_initializer, bias_initializer, eps, **kwargs)
        self._init_conv(kernel_size, padding)

    def get_config(self) -> dict:
        return {**super().get_config(), **self._conv_config()}
