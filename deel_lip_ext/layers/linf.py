"""l_inf-distance layers (Zhang et al., ICML 2021 and ICLR 2022).

A unit computes u(x) = ||x - w||_p + b. At p = inf every unit, hence every
layer and every network made of them, is 1-Lipschitz for the l_inf norm, so
a logit margin certifies l_inf robustness with one forward pass. Training
relaxes p (8 -> 1000 -> inf, see `deel_lip_ext.callbacks.LpScheduler`) because
the gradient of the max norm is one-hot.

The distances are computed by the chunked, memory-efficient op of
`deel_lip_ext.distance` (`linf_distance`, re-exported here with its helpers).
"""

from __future__ import annotations

import math
from typing import Any

import keras
from keras import ops
from numpy.typing import ArrayLike

from deel_lip_ext._validation import check_bool, check_choice, check_int, check_number, int_pair
from deel_lip_ext.distance import (
    NOMINAL_BATCH,
    automatic_chunk_size,
    check_p,
    interval_distance_bounds,
    linf_distance,
    naive_distance,
)
from deel_lip_ext.layers.base import LipschitzBounded

__all__ = [
    "LInfDistDense",
    "LInfDistConv2D",
    "LogitScale",
    "distance_layers",
    "set_p",
    "sublayers",
    "automatic_chunk_size",
    "linf_distance",
    "naive_distance",
    "interval_distance_bounds",
]


class _LInfDistBase(LipschitzBounded, keras.layers.Layer):
    """Shared machinery: norm order, mean shift with a running mean, bias, negation, identity init.

    Subclasses provide `_rows(inputs)` (inputs as (rows, input_dim) plus the
    output shape), `_kernel_matrix()` and `_identity_positions()`.
    """

    infinite_weights = ("p",)  # the norm order: p = inf is the l_inf-dist neuron

    def __init__(
        self,
        units: int,
        p: float = math.inf,
        mean_shift: bool = True,
        use_bias: bool | None = None,
        identity_init: bool = True,
        identity_value: float = 10.0,
        negate: bool = False,
        momentum: float = 0.9,
        kernel_initializer: str | keras.initializers.Initializer | None = None,
        bias_initializer: str | keras.initializers.Initializer = "zeros",
        chunk_size: int | None = None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.units = check_int(units, "units")
        self.identity_value = check_number(identity_value, "identity_value", minimum=0)
        self.momentum = check_number(momentum, "momentum", minimum=0, maximum=1)
        if self.momentum == 1.0:
            raise ValueError(f"momentum must be a number in [0, 1), got {momentum!r}.")
        self.mean_shift = check_bool(mean_shift, "mean_shift")
        self.identity_init = check_bool(identity_init, "identity_init")
        self.negate = check_bool(negate, "negate")
        # None: a bias exactly when there is no mean shift (the papers' layers).
        self.use_bias = (not mean_shift) if use_bias is None else check_bool(use_bias, "use_bias")
        self._p = check_p(p)
        self.kernel_initializer = keras.initializers.get(
            kernel_initializer or keras.initializers.RandomNormal(mean=0.0, stddev=1.0)
        )
        self.bias_initializer = keras.initializers.get(bias_initializer)
        self.chunk_size = check_int(chunk_size, "chunk_size", allow_none=True)

    @property
    def p(self):
        """Current norm order (a float, possibly inf); assign to change it, also during training."""
        if self.built:
            return float(ops.convert_to_numpy(self.p_variable))
        return self._p

    @p.setter
    def p(self, value):
        self._p = check_p(value)
        if self.built:
            self.p_variable.assign(self._p)

    def _build_common(self, kernel_shape):
        self.kernel = self.add_weight(name="kernel", shape=kernel_shape, initializer=self.kernel_initializer)
        if self.identity_init:
            positions = self._identity_positions()
            if positions is not None:
                # The variable's value: JAX's `where` takes arrays, not a keras.Variable.
                kernel = ops.convert_to_tensor(self.kernel)
                self.kernel.assign(ops.where(positions, -self.identity_value, kernel))
        self.bias = (
            self.add_weight(name="bias", shape=(self.units,), initializer=self.bias_initializer)
            if self.use_bias
            else None
        )
        self.moving_mean = (
            self.add_weight(name="moving_mean", shape=(self.units,), initializer="zeros", trainable=False)
            if self.mean_shift
            else None
        )
        # A variable, so a compiled training step sees the schedule's new p without retracing.
        self.p_variable = self.add_weight(
            name="p", shape=(), initializer=keras.initializers.Constant(self._p), trainable=False
        )

    def _finish(self, distances, training):
        """Mean shift (batch mean while training, running mean otherwise), bias and negation."""
        if self.mean_shift:
            if training:
                batch_mean = ops.mean(distances, axis=tuple(range(len(distances.shape) - 1)))
                self.moving_mean.assign(
                    self.momentum * self.moving_mean + (1.0 - self.momentum) * ops.stop_gradient(batch_mean)
                )
                distances = distances - batch_mean
            else:
                distances = distances - ops.cast(self.moving_mean, distances.dtype)
        if self.use_bias:
            distances = distances + ops.cast(self.bias, distances.dtype)
        return -distances if self.negate else distances

    def call(self, inputs, training=None):
        rows, output_shape = self._rows(inputs)
        distances = linf_distance(rows, self._kernel_matrix(), self.p_variable, self._chunk_size_for(inputs))
        return self._finish(ops.reshape(distances, output_shape), training)

    def _chunk_size_for(self, inputs):
        """The chunk size, from the static rows of the distance computation when automatic."""
        if self.chunk_size is not None:
            return self.chunk_size
        rows, input_dim = self._row_count(inputs.shape)
        return automatic_chunk_size(rows, input_dim, self.units)

    def interval_bounds(self, lower, upper):
        """Inference-mode output bounds over the input box [lower, upper] (interval bound propagation)."""
        lower_rows, output_shape = self._rows(lower)
        upper_rows, _ = self._rows(upper)
        low, high = interval_distance_bounds(
            lower_rows, upper_rows, self._kernel_matrix(), self.p, self._chunk_size_for(lower)
        )
        low = self._finish(ops.reshape(low, output_shape), training=False)
        high = self._finish(ops.reshape(high, output_shape), training=False)
        return (high, low) if self.negate else (low, high)

    def _lipschitz_constant(self, norm, input_shape):
        if norm == "l2":
            raise ValueError(
                f"layer {self.name!r} ({type(self).__name__}) has no L2 bound in this library: l_inf-dist layers are "
                "certified in l_inf (norm='linf', deel_lip_ext.linf.linf_lipschitz_bound)."
            )
        if not math.isinf(self.p):
            raise ValueError(
                f"layer {self.name!r} has p = {self.p}: only p = inf is 1-Lipschitz in l_inf "
                "(call deel_lip_ext.linf.set_p(model, float('inf')) before certifying)."
            )
        # In inference each output is +-(||patch - w_o||_inf - running mean + b_o): 1-Lipschitz in l_inf.
        return 1.0

    def vanilla_export(self):
        """A copy of the layer with the same weights (there is no plain Keras equivalent)."""
        clone = self.__class__.from_config(self.get_config())
        clone.build(self._built_input_shape)
        clone.set_weights(self.get_weights())
        return [clone]

    def get_config(self):
        config = super().get_config()
        p = self.p
        config.update(
            {
                "units": self.units,
                "p": "inf" if p == math.inf else p,
                "mean_shift": self.mean_shift,
                "use_bias": self.use_bias,
                "identity_init": self.identity_init,
                "identity_value": self.identity_value,
                "negate": self.negate,
                "momentum": self.momentum,
                "kernel_initializer": keras.initializers.serialize(self.kernel_initializer),
                "bias_initializer": keras.initializers.serialize(self.bias_initializer),
                "chunk_size": self.chunk_size,
            }
        )
        return config


@keras.saving.register_keras_serializable(package="deel_lip_ext")
class LInfDistDense(_LInfDistBase):
    """Dense layer of l_p-distance units: y_o = ||x - w_o||_p (+ b_o), 1-Lipschitz in l_inf at p = inf.

    Hidden layers use `mean_shift=True` (subtract the batch mean while
    training, a running mean at inference: a constant shift, so still
    1-Lipschitz) and no bias; the papers' last layer has a bias, no mean
    shift and `negate=True` (logits are large near a class centre).

    Args:
        units: number of output units.
        p: norm order in [1, inf]; assign `layer.p` to change it (see
            `deel_lip_ext.linf.LpScheduler`). Only p = inf is 1-Lipschitz in
            l_inf; a finite p has constant input_dim ** (1 / p).
        mean_shift: subtract the per-unit batch mean (training) / running
            mean (inference).
        use_bias: add a bias; None means `not mean_shift`.
        identity_init: when input_dim <= units, set w[i mod input_dim, i] =
            -identity_value, so that unit i starts as x_(i mod input_dim) + 10
            and deep stacks start near the identity (the papers' init).
        identity_value: the value above (10 in the papers).
        negate: return the negated output.
        momentum: running mean r <- momentum * r + (1 - momentum) * batch
            mean (Keras convention; the papers' PyTorch momentum 0.1).
        kernel_initializer: initializer of the centres, N(0, 1) by default.
        bias_initializer: initializer of the bias.
        chunk_size: output units computed at once; None: `automatic_chunk_size`
            (a (rows, chunk, inputs) intermediate no larger than the output; rows
            = batch x output positions for the convolution).

    Examples:
        >>> layer = LInfDistDense(64, p=8.0)
        >>> y = layer(np.random.rand(4, 16).astype("float32"), training=True)
        >>> layer.p = float("inf")
    """

    def build(self, input_shape: tuple[int | None, ...]) -> None:
        if len(input_shape) != 2 or input_shape[-1] is None:
            raise ValueError(f"LInfDistDense expects inputs of shape (batch, features), got {input_shape}.")
        self.input_dim = int(input_shape[-1])
        self._built_input_shape = tuple(input_shape)
        self._build_common((self.input_dim, self.units))

    def _identity_positions(self):
        if self.input_dim > self.units:
            return None
        return ops.transpose(ops.one_hot(ops.arange(self.units) % self.input_dim, self.input_dim)) > 0.5

    def _kernel_matrix(self):
        return self.kernel

    def _rows(self, inputs):
        return inputs, (-1, self.units)

    def _row_count(self, input_shape):
        return input_shape[0], self.input_dim

    def compute_output_shape(self, input_shape: tuple[int | None, ...]):
        return tuple(input_shape[:-1]) + (self.units,)


_PADDINGS = ("valid", "same")


@keras.saving.register_keras_serializable(package="deel_lip_ext")
class LInfDistConv2D(_LInfDistBase):
    """Convolutional l_p-distance layer: y[h, w, o] = ||patch(h, w) - w_o||_p, 1-Lipschitz in l_inf at p = inf.

    Each output is the distance of one input patch to a filter, so it moves
    at most as much as the largest input coordinate. The mean shift averages
    over the batch and the spatial positions. Zero padding ("same") keeps the
    Lipschitz property: padded values are constants.

    Args:
        filters: number of output channels.
        kernel_size: int or pair, the patch size.
        strides: int or pair.
        padding: "valid" or "same".
        p: norm order in [1, inf], as in `LInfDistDense`.
        mean_shift: subtract the per-filter batch mean (training) / running mean (inference).
        use_bias: add a bias; None means `not mean_shift`.
        identity_init: when c_in <= filters, set the kernel centre of channel i mod c_in of
            filter i to -identity_value (the papers' init).
        identity_value: the value above.
        negate: return the negated output.
        momentum: running mean momentum (Keras convention).
        kernel_initializer: initializer of the centres, N(0, 1) by default.
        bias_initializer: initializer of the bias.
        chunk_size: output filters computed at once; None: automatic.
        **kwargs: base `keras.layers.Layer` arguments (name, dtype, ...).

    Examples:
        >>> layer = LInfDistConv2D(8, 3, padding="same", p=8.0)
        >>> y = layer(np.random.rand(2, 6, 6, 3).astype("float32"), training=True)
    """

    def __init__(
        self,
        filters: int,
        kernel_size: int | tuple[int, int],
        strides: int | tuple[int, int] = 1,
        padding: str = "valid",
        p: float = math.inf,
        mean_shift: bool = True,
        use_bias: bool | None = None,
        identity_init: bool = True,
        identity_value: float = 10.0,
        negate: bool = False,
        momentum: float = 0.9,
        kernel_initializer: str | keras.initializers.Initializer | None = None,
        bias_initializer: str | keras.initializers.Initializer = "zeros",
        chunk_size: int | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(
            filters,
            p=p,
            mean_shift=mean_shift,
            use_bias=use_bias,
            identity_init=identity_init,
            identity_value=identity_value,
            negate=negate,
            momentum=momentum,
            kernel_initializer=kernel_initializer,
            bias_initializer=bias_initializer,
            chunk_size=chunk_size,
            **kwargs,
        )
        self.kernel_size = int_pair(kernel_size, "kernel_size")
        self.strides = int_pair(strides, "strides")
        self.padding = check_choice(padding, "padding", _PADDINGS)

    @property
    def filters(self):
        return self.units

    def build(self, input_shape: tuple[int | None, ...]) -> None:
        if len(input_shape) != 4 or input_shape[-1] is None:
            raise ValueError(
                f"LInfDistConv2D expects inputs of shape (batch, height, width, channels), got {input_shape}."
            )
        self.input_channels = int(input_shape[-1])
        self._built_input_shape = tuple(input_shape)
        self._build_common(self.kernel_size + (self.input_channels, self.units))

    def _identity_positions(self):
        if self.input_channels > self.units:
            return None
        kernel_height, kernel_width = self.kernel_size
        centre = ops.one_hot((kernel_height // 2) * kernel_width + kernel_width // 2, kernel_height * kernel_width)
        channel = ops.one_hot(ops.arange(self.units) % self.input_channels, self.input_channels)
        mask = ops.einsum("s,oc->sco", centre, channel)
        return ops.reshape(mask, self.kernel_size + (self.input_channels, self.units)) > 0.5

    def _kernel_matrix(self):
        # extract_patches orders a patch as (row, column, channel), like this reshape.
        return ops.reshape(self.kernel, (-1, self.units))

    def _rows(self, inputs):
        patches = ops.image.extract_patches(
            inputs, self.kernel_size, strides=self.strides, padding=self.padding, data_format="channels_last"
        )
        height, width, patch_dim = patches.shape[1], patches.shape[2], patches.shape[3]
        return ops.reshape(patches, (-1, patch_dim)), (-1, height, width, self.units)

    def _row_count(self, input_shape):
        _, height, width, _ = self.compute_output_shape(input_shape)
        batch = input_shape[0] if input_shape[0] is not None else NOMINAL_BATCH
        rows = batch * height * width if height is not None and width is not None else None
        return rows, self.kernel_size[0] * self.kernel_size[1] * self.input_channels

    def compute_output_shape(self, input_shape: tuple[int | None, ...]):
        spatial = []
        for size, kernel, stride in zip(input_shape[1:3], self.kernel_size, self.strides):
            if size is None:
                spatial.append(None)
            elif self.padding == "same":
                spatial.append(-(-size // stride))
            else:
                spatial.append((size - kernel) // stride + 1)
        return (input_shape[0], *spatial, self.units)

    def get_config(self) -> dict:
        config = super().get_config()
        config["filters"] = config.pop("units")
        config.update({"kernel_size": self.kernel_size, "strides": self.strides, "padding": self.padding})
        return config


@keras.saving.register_keras_serializable(package="deel_lip_ext")
class LogitScale(LipschitzBounded, keras.layers.Layer):
    """Identity layer that owns the learnable logit scale s of l_inf-dist Net v2.

    v2 multiplies the logits by s only inside its cross-entropy term, so the
    forward pass is unchanged (the network stays 1-Lipschitz) and the loss
    (`deel_lip_ext.linf.ClippedHingeCrossEntropy(logit_scale=layer)`) reads
    `layer.scale`. s = lr_multiplier * raw, so that with Adam s moves
    lr_multiplier times slower than the other weights (v2: 0.006 vs 0.03).

    Args:
        initial_value: initial s (1 in v2).
        lr_multiplier: ratio of s's learning rate to the optimizer's.
        **kwargs: base `keras.layers.Layer` arguments (name, dtype, trainable, ...).

    Examples:
        >>> scale = LogitScale()
        >>> logits = scale(np.zeros((2, 10), "float32"))
    """

    def __init__(self, initial_value: float = 1.0, lr_multiplier: float = 0.2, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.initial_value = check_number(initial_value, "initial_value", minimum=0, strict=True)
        self.lr_multiplier = check_number(lr_multiplier, "lr_multiplier", minimum=0, strict=True)

    def build(self, input_shape: tuple[int | None, ...]) -> None:
        self.raw_scale = self.add_weight(
            name="raw_scale",
            shape=(),
            initializer=keras.initializers.Constant(self.initial_value / self.lr_multiplier),
        )

    @property
    def scale(self):
        """The scale s as a tensor (differentiable w.r.t. the layer's weight)."""
        return self.lr_multiplier * self.raw_scale

    def call(self, inputs: ArrayLike):
        return inputs

    def interval_bounds(self, lower: ArrayLike, upper: ArrayLike):
        return lower, upper

    def _lipschitz_constant(self, norm, input_shape):
        return 1.0  # the identity

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self) -> dict:
        config = super().get_config()
        config.update({"initial_value": self.initial_value, "lr_multiplier": self.lr_multiplier})
        return config


def sublayers(layer_or_model: keras.Model | keras.layers.Layer) -> list:
    """The layers of a model (recursively, in order) or [layer].

    Args:
        layer_or_model: a Keras model (anything with a `layers` list, nested models unrolled) or a layer.
    """
    inner = getattr(layer_or_model, "layers", None)
    if inner is None:
        return [layer_or_model]
    return [leaf for layer in inner for leaf in sublayers(layer)]


def distance_layers(model: keras.Model) -> list:
    """All l_inf-dist layers (`LInfDistDense`, `LInfDistConv2D`) of a model, nested models included.

    Args:
        model: a Keras model (or a single layer).

    Returns:
        A list of layers, in the order of `sublayers`.

    Examples:
        >>> [layer.name for layer in distance_layers(model)]
    """
    return [layer for layer in sublayers(model) if isinstance(layer, _LInfDistBase)]


def set_p(model: keras.Model, p: float) -> None:
    """Set the norm order of every l_inf-dist layer of `model` (p = inf for certification).

    Args:
        model: a Keras model holding at least one l_inf-dist layer (`ValueError` otherwise).
        p: norm order, a number >= 1 or `float("inf")` (or "inf").

    Examples:
        >>> set_p(model, float("inf"))
    """
    p = check_p(p)
    layers = distance_layers(model)
    if not layers:
        raise ValueError(f"model {getattr(model, 'name', model)!r} has no l_inf-dist layer whose p could be set.")
    for layer in layers:
        layer.p = p
