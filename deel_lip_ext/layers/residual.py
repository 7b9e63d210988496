"""Lipschitz residual layers: `LiResNetBlock`, `ChordDense` and the `LipResidual` wrapper.

* `LiResNetBlock` (Hu et al., NeurIPS 2023): the linear residual block
  x + conv(x), normalized by the spectral norm of the WHOLE block operator
  I + W, not by 1 + ||W||: divided by the larger of a power-iteration
  estimate on the block (persistent vector; it carries the gradient) and a
  Gram-iteration upper bound at the input size
  (`deel_lip_ext.parametrizations.norm_bounds`), so the block is k-Lipschitz
  after every optimizer step (power iteration alone converges from below and
  lags behind the kernel). The certified constant never uses a float32
  estimate: `lipschitz_constant` is the
  exact operator norm of the normalized block at the real input size
  (per-frequency SVD for circular padding, SVD of the impulse responses on
  small inputs) or, on large zero-padded inputs, the largest singular value
  of the circular convolution on the (n + k - 1) torus, a provable upper
  bound (the zero-padded operator is a compression of it). The block is one
  convolution whose kernel is W plus the identity at its centre, exported as
  one stock `Conv2D`.
* `ChordDense` (the LiResNet++ "recipe"): a dense layer whose kernel is
  orthogonalized by a Cholesky factorization of its Gram matrix.
* `LipResidual` (deel-torchlip's name and formula): s * x + (1 - s) * f(x),
  s = sigmoid(alpha) with a trainable alpha, for any layer f of known
  constant L_f; its constant is s + (1 - s) * L_f.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import keras
from keras import ops
from numpy.typing import ArrayLike

from deel_lip_ext._validation import check_int
from deel_lip_ext.layers.base import LipschitzBounded, built_input_shape, copied_with_weights
from deel_lip_ext.layers.conv_base import LipschitzConv
from deel_lip_ext.layers.dense import LipschitzDenseBase
from deel_lip_ext.lipschitz import check_graph_call, stock_layer_lipschitz
from deel_lip_ext.parametrizations import (
    check_chord_eps,
    chord_orthogonalization,
    conv_with_padding,
    residual_block_normalization,
)

__all__ = ["LiResNetBlock", "ChordDense", "LipResidual"]


@keras.saving.register_keras_serializable(package="deel_lip_ext")
class LiResNetBlock(LipschitzConv):
    """Linear residual block k * (x + conv(x)) / ||I + W||, LiResNet's building block.

    The block operator I + W (W: a stride-1 convolution with as many output
    as input channels) is divided by an upper bound of its spectral norm at
    the input size: the larger of `n_power_iterations` steps of power
    iteration on the block with a persistent vector u of the input's shape
    (1, H, W, C) and a Gram-iteration bound over the frequencies of the
    (circular, or for "same" the (n + k // 2)) torus. The block then
    multiplies by the kernel W + identity-at-centre, scaled: it is
    k-Lipschitz after every step.

    `lipschitz_constant` is the exact float64 operator norm of the
    normalized block at the input size (or a provable upper bound on large
    zero-padded inputs, see the module docstring): <= k, usually within a
    few percent of it.

    Args:
        kernel_size: odd int or pair of odd ints.
        padding: "same" (zero) or "circular".
        activation: activation after the block (counts in the constant; None by default).
        use_bias: whether to add a bias.
        kernel_initializer: initializer of the residual kernel W (small values: the block starts near k * I).
        bias_initializer: initializer of the bias.
        kernel_regularizer: regularizer of W.
        bias_regularizer: regularizer of the bias.
        activity_regularizer: output regularizer.
        kernel_constraint: constraint on W.
        bias_constraint: constraint on the bias.
        k_coef_lip: target Lipschitz constant of the block.
        n_power_iterations: power iterations per call (>= 1) from the persistent vector.
        **kwargs: base `keras.layers.Layer` arguments (name, dtype, trainable, ...).

    The input height and width must be known at build time (the power
    iteration vector has the input's shape) and the layer refuses other sizes.

    Examples:
        >>> block = LiResNetBlock(3, padding="circular")
        >>> y = block(keras.random.normal((2, 16, 16, 8)))
        >>> block.lipschitz_constant()  # exact norm of the normalized block, about 1
        >>> (conv,) = block.vanilla_export()[-1:]  # one keras Conv2D, identity folded in
    """

    paddings = ("same", "circular")
    filters_from_input = True

    def __init__(
        self,
        kernel_size: int | tuple[int, int] = 3,
        padding: str = "same",
        activation: str | Callable | None = None,
        use_bias: bool = True,
        kernel_initializer: str | keras.initializers.Initializer | None = None,
        bias_initializer: str | keras.initializers.Initializer = "zeros",
        kernel_regularizer: str | keras.regularizers.Regularizer | None = None,
        bias_regularizer: str | keras.regularizers.Regularizer | None = None,
        activity_regularizer: str | keras.regularizers.Regularizer | None = None,
        kernel_constraint: str | keras.constraints.Constraint | None = None,
        bias_constraint: str | keras.constraints.Constraint | None = None,
        k_coef_lip: float = 1.0,
        n_power_iterations: int = 1,
        **kwargs: Any,
    ) -> None:
        if kernel_initializer is None:
            kernel_initializer = keras.initializers.RandomNormal(0.0, 0.02)
        super().__init__(
            None,
            kernel_size,
            strides=1,
            padding=padding,
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
        if any(k % 2 == 0 for k in self.kernel_size):
            raise ValueError(f"kernel_size must be odd (the identity sits at the centre tap), got {kernel_size!r}.")
        self.n_power_iterations = check_int(n_power_iterations, "n_power_iterations")

    def check_build_shape(self, input_shape):
        if None in tuple(input_shape)[1:]:
            raise ValueError(
                f"LiResNetBlock needs known height, width and channels (its power-iteration vector has the input's "
                f"shape), got input shape {tuple(input_shape)}: give the model a fixed input size."
            )

    def build_parametrization_state(self):
        height, width = self.input_spatial_size
        self.u = self.add_weight(
            name="u",
            shape=(1, height, width, self.filters),
            initializer=keras.initializers.RandomNormal(0.0, 1.0),
            trainable=False,
            dtype="float32",
            autocast=False,
        )

    def kernel_dependencies(self):
        return [self.kernel, self.u]

    def _conv(self, x, kernel):
        """The block's stride-1 convolution with `kernel` ("same" zero or circular padding)."""
        return conv_with_padding(x, kernel, self.padding)

    def compute_kernel(self):
        block, u = residual_block_normalization(
            ops.cast(self.kernel, "float32"), self.u, self.padding, self.n_power_iterations, self.k_coef_lip
        )
        return block, [(self.u, u)]

    def lipschitz_by_construction(self) -> bool:
        return False  # normalized by a power-iteration estimate, which may be below the norm

    def condense(self):
        """Nothing to do: the raw kernel W excludes the identity and is renormalized every step.

        Writing the constrained kernel back into W would change the function
        (the identity would be counted twice), so `condense` (and
        `deel_lip_ext.callbacks.CondenseCallback`) leaves the block as it is.
        """

    def get_config(self) -> dict:
        config = super().get_config()
        for key in ("filters", "strides"):
            config.pop(key)
        config["n_power_iterations"] = self.n_power_iterations
        return config


@keras.saving.register_keras_serializable(package="deel_lip_ext")
class ChordDense(LipschitzDenseBase):
    """Dense layer with a CHORD (Cholesky-orthogonalized) kernel, times `k_coef_lip`.

    With P = kernel^T (units x n_in), G = P P^T + eps I = L L^T and the
    layer uses L^-1 P: orthonormal rows (orthonormal columns when
    units > n_in), up to the ridge; every singular value is <= k. One
    Cholesky factorization and one triangular solve per step, no iteration.

    Args:
        units: output dimension.
        activation: activation applied to the output (counts in the constant).
        use_bias: whether to add a bias.
        kernel_initializer: initializer of the raw kernel.
        bias_initializer: initializer of the bias.
        kernel_regularizer: regularizer of the raw kernel.
        bias_regularizer: regularizer of the bias.
        activity_regularizer: regularizer of the output.
        kernel_constraint: constraint of the raw kernel.
        bias_constraint: constraint of the bias.
        k_coef_lip: Lipschitz constant of the layer.
        eps: ridge added to the Gram matrix (relative to its mean diagonal when that is > 1; at least
            2^-23, float32's resolution, see `parametrizations.chord_orthogonalization`).
        **kwargs: base `keras.layers.Layer` arguments (name, dtype, trainable, ...).

    Examples:
        >>> head = ChordDense(10)
        >>> logits = head(keras.random.normal((4, 64)))
        >>> plain = head.vanilla_export()[0]  # a keras.layers.Dense
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
        eps: float = 1e-6,
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
        self.eps = check_chord_eps(eps)

    def kernel_dependencies(self):
        return [self.kernel]

    def compute_kernel(self):
        kernel = chord_orthogonalization(ops.cast(self.kernel, "float32"), self.eps)
        return kernel * self.k_coef_lip, []

    def get_config(self) -> dict:
        return {**super().get_config(), "eps": self.eps}


def _exported_parts(layer):
    """New layers computing what `layer` computes: its `vanilla_export` (a model's is one model), a plain
    `keras.Sequential` of its layers' exports, or a copy with its weights. An export shares no layer with
    the model it comes from (training that model afterwards must not move the export)."""
    if hasattr(layer, "vanilla_export"):
        exported = layer.vanilla_export()
        return [exported] if isinstance(exported, keras.Model) else list(exported)
    if isinstance(layer, keras.Sequential):
        return [keras.Sequential([part for sub in layer.layers for part in _exported_parts(sub)])]
    return [copied_with_weights(layer)]


def _inner_constant(layer, norm, input_shape):
    """The branch's constant: the protocol, the stock table, or the product over a `keras.Sequential`."""
    if isinstance(layer, keras.Sequential):
        check_graph_call(layer, "LipResidual's bound")
        constant, shape = 1.0, input_shape if input_shape is not None else built_input_shape(layer)
        for sub in layer.layers:
            constant *= _inner_constant(sub, norm, shape)
            shape = None if shape is None else tuple(sub.compute_output_shape(shape))
        return constant
    if isinstance(layer, keras.Model):
        raise ValueError(
            f"LipResidual's branch {layer.name!r} is a functional model: bound it with "
            "deel_lip_ext.utils.model_lipschitz_bound and use its layers in a Sequential branch instead."
        )
    if isinstance(layer, LipschitzBounded):
        return layer.lipschitz_constant(norm, input_shape)
    return stock_layer_lipschitz(layer, norm, input_shape if input_shape is not None else built_input_shape(layer))


@keras.saving.register_keras_serializable(package="deel_lip_ext")
class LipResidual(LipschitzBounded, keras.layers.Layer):
    """Convex residual connection s * x + (1 - s) * f(x), s = sigmoid(alpha) trainable (deel-torchlip's LipResidual).

    deel-torchlip's `LipResidual` takes x and y = f(x) and returns
    sigmoid(alpha) x + (1 - sigmoid(alpha)) y; this wrapper owns f. Its
    Lipschitz constant is s + (1 - s) * L_f where L_f is f's own constant
    from the protocol (`lipschitz_constant` of a library layer, the stock
    table otherwise, the product of its layers' constants for a
    `keras.Sequential` branch): a convex combination, so it is 1-Lipschitz
    when f is. The export wraps the branch's export; a branch exported to
    several layers (e.g. `CircularPadding2D` + `Conv2D`) becomes a
    `keras.Sequential` whose constant the wrapper cannot bound (it refuses:
    bound the original model instead).

    Args:
        layer: the branch f, a Keras layer whose output has its input's shape.
        alpha_initializer: initial value of alpha (0: s = 0.5).
        **kwargs: base `keras.layers.Layer` arguments.

    Examples:
        >>> res = LipResidual(SpectralConv2D(8, 3, activation="relu"))
        >>> y = res(keras.random.normal((2, 16, 16, 8)))
        >>> res.lipschitz_constant()  # <= 1
    """

    def __init__(self, layer: keras.layers.Layer, alpha_initializer: float = 0.0, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if not isinstance(layer, keras.layers.Layer):
            raise ValueError(f"layer must be a Keras layer, got {layer!r}.")
        self.layer = layer
        self.alpha_initializer = float(alpha_initializer)

    def build(self, input_shape: tuple[int | None, ...]) -> None:
        if not self.layer.built:
            self.layer.build(input_shape)
        output_shape = tuple(self.layer.compute_output_shape(input_shape))
        if output_shape[1:] != tuple(input_shape)[1:]:
            raise ValueError(
                f"LipResidual needs a branch that keeps the shape: {self.layer.name!r} maps {tuple(input_shape)} "
                f"to {output_shape}."
            )
        self.alpha = self.add_weight(
            name="alpha", shape=(), initializer=keras.initializers.Constant(self.alpha_initializer), autocast=False
        )

    def _shares(self):
        """(s, 1 - s) as `call` multiplies with them: s rounded to the compute dtype, 1 - s computed in it.

        Under mixed precision the rounded pair may sum to more than 1 and s may round down: the constant is
        computed from this pair, not from the float64 sigmoid (which can be ~3e-4 below the truth in float16).
        """
        share = ops.cast(ops.sigmoid(self.alpha), self.compute_dtype)
        rest = 1.0 - share
        return tuple(float(ops.convert_to_numpy(ops.cast(value, "float32"))) for value in (share, rest))

    def _lipschitz_constant(self, norm, input_shape):
        if not self.built:
            raise ValueError(f"layer {self.name!r} must be built before its Lipschitz constant can be computed.")
        share, rest = self._shares()
        return share + rest * _inner_constant(self.layer, norm, input_shape)

    def call(self, inputs: ArrayLike, training: bool | None = None):
        share = ops.cast(ops.sigmoid(self.alpha), self.compute_dtype)
        return share * inputs + (1.0 - share) * self.layer(inputs, training=training)

    def compute_output_shape(self, input_shape: tuple[int | None, ...]):
        return tuple(input_shape)

    def vanilla_export(self):
        """A copy of the wrapper around the branch's export (no stock layer computes a convex combination)."""
        inner = _exported_parts(self.layer)
        branch = inner[0] if len(inner) == 1 else keras.Sequential(inner)
        clone = LipResidual(branch, alpha_initializer=self.alpha_initializer, name=self.name, dtype=self.dtype_policy)
        clone.build(built_input_shape(self))
        clone.alpha.assign(self.alpha)
        return [clone]

    def get_config(self) -> dict:
        return {
            **super().get_config(),
            "layer": keras.saving.serialize_keras_object(self.layer),
            "alpha_initializer": self.alpha_initializer,
        }

    @classmethod
    def from_config(cls, config: dict) -> LipResidual:
        config = dict(config)
        config["layer"] = keras.saving.deserialize_keras_object(config["layer"])
        return cls(**config)
