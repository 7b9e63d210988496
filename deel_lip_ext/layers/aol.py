"""AOL layers (Prach & Lampert, ECCV 2022): `AOLDense` and `AOLConv2D`.

The kernel's input channels are rescaled by d_i = (sum_j |P^T P|_ij)^(-1/2), P the layer's linear map,
so that ||P D||_2 <= 1 (Schur test: D P^T P D has absolute row sums <= 1 after the rescaling).

For a convolution, P^T P is (on a torus large enough not to wrap) the convolution whose kernel is the
kernel's self-correlation M (`deel_lip_ext.parametrizations.kernel_self_correlation`), and the rescaling is one
factor per input channel. It holds for every padding and stride:

* circular: the operator's Gram is the torus Gram with wrapped entries merged, |a + b| <= |a| + |b|;
* zero ("same") or "valid" padding, any stride: P = R C E with E the zero-embedding of the image in a torus of
  size n + k - 1, C the circular conv there and R a restriction of the outputs (a row subset, which also
  covers strides); ||R C E D x|| <= ||C D' E x|| <= ||E x|| = ||x|| since D acts per channel (E D = D' E).

So the layer is k-Lipschitz at every input size (its `lipschitz_constant` is still the exact operator norm at
the build size, which can be smaller than k).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import keras
from keras import ops

from deel_lip_ext.layers.conv_base import LipschitzConv
from deel_lip_ext.layers.dense import LipschitzDenseBase
from deel_lip_ext.parametrizations import aol_rescaling

__all__ = ["AOLDense", "AOLConv2D"]


class _AOLMixin:
    def kernel_dependencies(self):
        return [self.kernel]

    def compute_kernel(self):
        return aol_rescaling(ops.cast(self.kernel, "float32")) * self.k_coef_lip, []

    def condense(self):
        """Nothing to do: the AOL rescaling of a rescaled kernel is not that kernel (D' D K != D K), so writing
        the constrained kernel back into the raw one would change the function (by 2 to 7 %, measured);
        every raw kernel already gives a k-Lipschitz layer."""


@keras.saving.register_keras_serializable(package="deel_lip_ext")
class AOLDense(_AOLMixin, LipschitzDenseBase):
    """Dense layer with the AOL rescaling: kernel `k * D K`, D = diag((sum_j |K K^T|_ij)^(-1/2)).

    k-Lipschitz for any raw kernel, with no iteration; almost orthogonal after training.
    Exports to a stock `keras.layers.Dense` with the rescaled kernel.

    Args:
        units: output dimension.
        activation: activation applied to the output; it counts in the Lipschitz constant as in
            `SpectralDense`.
        use_bias: whether to add a bias.
        kernel_initializer: initializer of the raw kernel (orthogonal: the rescaling is then the identity).
        bias_initializer: initializer of the bias.
        kernel_regularizer: regularizer of the raw kernel.
        bias_regularizer: regularizer of the bias.
        activity_regularizer: regularizer of the output.
        kernel_constraint: constraint of the raw kernel.
        bias_constraint: constraint of the bias.
        k_coef_lip: Lipschitz constant of the layer.
        **kwargs: base `keras.layers.Layer` arguments (name, dtype, trainable, ...).

    Examples:
        >>> layer = AOLDense(16)
        >>> y = layer(keras.random.normal((4, 8)))
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


@keras.saving.register_keras_serializable(package="deel_lip_ext")
class AOLConv2D(_AOLMixin, LipschitzConv):
    r"""2-D convolution with the AOL rescaling, k-Lipschitz for every padding, stride and input size.

    Each input channel c of the kernel is multiplied by $(\sum_{c_2, \delta} |M[c, \delta, c_2]|)^{-1/2}$, M the
    kernel's self-correlation (see the module docstring for the proof for "same", "valid" and "circular"
    padding and strides). Exports to a stock `keras.layers.Conv2D` (after `CircularPadding2D` when circular).

    Args:
        filters: number of output channels.
        kernel_size: int or pair.
        strides: int or pair.
        padding: "same" (zero), "valid" or "circular".
        data_format: "channels_last" or None (the only layout supported).
        dilation_rate: must be 1.
        groups: must be 1.
        activation: activation applied to the output (counts in the Lipschitz constant).
        use_bias: whether to add a bias.
        kernel_initializer: initializer of the raw kernel.
        bias_initializer: initializer of the bias.
        kernel_regularizer: regularizer of the raw kernel.
        bias_regularizer: regularizer of the bias.
        activity_regularizer: regularizer of the output.
        kernel_constraint: constraint of the raw kernel.
        bias_constraint: constraint of the bias.
        k_coef_lip: Lipschitz constant of the layer.
        **kwargs: base `keras.layers.Layer` arguments (name, dtype, trainable, ...).

    Examples:
        >>> conv = AOLConv2D(16, 3, padding="same")
        >>> y = conv(keras.random.normal((2, 28, 28, 3)))
        >>> plain = conv.vanilla_export()[0]  # a keras.layers.Conv2D
    """

    def __init__(
        self,
        filters: int,
        kernel_size: int | tuple[int, int],
        strides: int | tuple[int, int] = (1, 1),
        padding: str = "same",
        data_format: str | None = None,
        dilation_rate: int | tuple[int, int] = (1, 1),
        groups: int = 1,
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
        super().__init__(
            filters,
            kernel_size,
            strides=strides,
            padding=padding,
            data_format=data_format,
            dilation_rate=dilation_rate,
            groups=groups,
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
