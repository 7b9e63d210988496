"""Seeded generator of random small models and the soundness check of their Lipschitz bounds.

`random_model(seed)` builds a Sequential or functional model from the layers of `LAYERS` (every
layer of `deel_lip_ext.layers` plus stock Keras layers), merges (with broadcasting), Keras ops,
shared layers and nested models. `check_model(model, norm, seed)` either gets a clear refusal
(`ValueError`) from `model_lipschitz_bound`, or checks that the bound is >= the exact Jacobian
norm at random points and >= the best ||f(a) - f(b)|| / ||a - b|| of a gradient pair search.

To fuzz a new layer, add one `Entry` to `LAYERS` (the test suite checks that every class exported
by `deel_lip_ext.layers` has one).
"""

import dataclasses
from typing import Callable

import keras
import numpy as np
from _backend import batch_jacobian, runs_channels_first_convolutions, to_numpy, value_and_input_gradient
from keras import ops

from deel_lip_ext import callbacks
from deel_lip_ext import layers as lip
from deel_lip_ext.layers.pad_conv import PAD_CONV_PADDINGS
from deel_lip_ext.layers.padding import PAD_MODES
from deel_lip_ext.lipschitz import ACTIVATIONS
from deel_lip_ext.model import vanilla_model
from deel_lip_ext.utils import model_lipschitz_bound
from deel_lip_ext.zoo.bcop import NearestUpSampling2D

# Known activations by name (constructed through keras.activations.get), plus unknown ones.
KNOWN_ACTIVATIONS = sorted(f.__name__ for f in ACTIVATIONS if f is not keras.activations.softmax) + [None]
UNKNOWN_ACTIVATIONS = ["exponential", "mish", lambda x: 3.0 * keras.activations.relu(x)]
REL_TOL = 1e-4


def _activation(rng):
    if rng.random() < 0.08:
        return UNKNOWN_ACTIVATIONS[rng.integers(len(UNKNOWN_ACTIVATIONS))]
    return KNOWN_ACTIVATIONS[rng.integers(len(KNOWN_ACTIVATIONS))]


def _init(rng):
    return keras.initializers.RandomNormal(0.0, float(rng.uniform(0.2, 0.8)), seed=int(rng.integers(1 << 30)))


def _bias(rng):
    return keras.initializers.RandomNormal(0.0, 0.3, seed=int(rng.integers(1 << 30)))


def _k(rng):
    return float(rng.choice([1.0, 1.0, 0.5, 2.0]))


@dataclasses.dataclass
class Entry:
    """One layer the fuzzer may use: `make(rng, shape)` returns a layer for that input shape, or None."""

    name: str
    kind: str  # "vector": input (N, d); "image": input (N, H, W, C)
    make: Callable
    classes: tuple = ()  # the deel_lip_ext.layers classes it covers


def _dense_like(cls):
    def make(rng, shape):
        return cls(
            int(rng.choice([2, 4, 6, 8])),
            activation=_activation(rng),
            k_coef_lip=_k(rng),
            kernel_initializer=_init(rng),
            bias_initializer=_bias(rng),
        )

    return make


def _conv_like(cls, downsampling=False):
    def make(rng, shape):
        size = shape[1]
        padding = str(rng.choice(["same", "valid", "circular"]))
        if downsampling and rng.random() < 0.4 and size % 2 == 0 and size >= 4:
            kernel, strides = 4 if size >= 8 else 2, 2
        else:
            kernel, strides = int(rng.choice([1, 2, 3])), 1
            if not downsampling and rng.random() < 0.3:
                strides = 2
        if padding == "valid" and size - kernel < 1:
            padding = "same"
        kwargs = {} if cls is lip.BCOPConv2D else {"kernel_initializer": _init(rng)}
        return cls(
            int(rng.choice([2, 4])),
            kernel,
            strides=strides,
            padding=padding,
            activation=_activation(rng),
            k_coef_lip=_k(rng),
            bias_initializer=_bias(rng),
            **kwargs,
        )

    return make


def _even_channels(cls, **kwargs):
    def make(rng, shape):
        if shape[-1] % 2:
            return None
        return cls(k_coef_lip=_k(rng), **kwargs)

    return make


def _pooling(cls):
    def make(rng, shape):
        if shape[1] % 2 or shape[1] < 4:
            return None
        return cls(2, k_coef_lip=_k(rng))

    return make


def _sorted_pairs_pooling(rng, shape):
    """The export's fused GroupSort2 + L2-norm pooling, both constants drawn."""
    if shape[-1] % 2 or shape[1] % 2 or shape[1] < 4:
        return None
    return lip.GroupSort2L2NormPooling2D(2, k_coef_lip=_k(rng), sort_k_coef_lip=_k(rng))


def _conv_sort_conv(rng, shape):
    """The export's fold of Conv2D, GroupSort2, Conv2D (and its fused pooling where the size allows)."""
    padding = str(rng.choice(["same", "valid"]))
    convs = [
        {"filters": int(rng.choice(filters)), "kernel_size": 3, "padding": padding} for filters in ([2, 4], [2, 3, 4])
    ]
    size = shape[1] if padding == "same" else shape[1] - 4
    if size < 1:
        return None
    pooling = None
    if size >= 4 and size % 2 == 0 and rng.random() < 0.5:
        pooling = lip.GroupSort2L2NormPooling2D(2, k_coef_lip=_k(rng), sort_k_coef_lip=_k(rng)).get_config()
    return lip.ConvGroupSort2Conv2D(*convs, sort_k_coef_lip=_k(rng), pooling=pooling)


def _dense_sort_dense(rng, shape):
    """The export's fold of Dense, GroupSort2, Dense (kernels and biases drawn)."""
    denses = [
        {"units": int(rng.choice(units)), "kernel_initializer": _init(rng), "bias_initializer": _bias(rng)}
        for units in ([2, 4, 6], [1, 3, 4])
    ]
    return lip.DenseGroupSort2Dense(*denses, sort_k_coef_lip=_k(rng))


def _global(cls):
    def make(rng, shape):
        return cls(k_coef_lip=_k(rng))

    return make


def _stock_dense(rng, shape):
    return keras.layers.Dense(
        int(rng.choice([2, 4, 6])),
        activation=_activation(rng),
        kernel_initializer=_init(rng),
        bias_initializer=_bias(rng),
    )


def _stock_conv(rng, shape):
    size = shape[1]
    padding = "valid" if size > 3 and rng.random() < 0.4 else "same"
    return keras.layers.Conv2D(
        int(rng.choice([2, 4])),
        int(rng.choice([1, 2, 3])),
        strides=int(rng.choice([1, 1, 2])),
        padding=padding,
        activation=_activation(rng),
        kernel_initializer=_init(rng),
        bias_initializer=_bias(rng),
    )


def _linf_dense(rng, shape):
    return lip.LInfDistDense(
        int(rng.choice([4, 6])), identity_init=bool(rng.random() < 0.5), negate=bool(rng.random() < 0.3)
    )


def _linf_conv(rng, shape):
    return lip.LInfDistConv2D(int(rng.choice([2, 4])), int(rng.choice([1, 3])), padding="same")


def _upsampling(rng, shape):
    return lip.InvertibleUpSampling(2) if shape[-1] % 4 == 0 else None


def _downsampling(rng, shape):
    return lip.InvertibleDownSampling(2) if shape[1] % 2 == 0 else None


def _residual(cls):
    def make(rng, shape):
        kwargs = {"kernel_initializer": _init(rng), "bias_initializer": _bias(rng)}
        if len(shape) == 4:
            padding = str(rng.choice(["same", "circular"]))
            kernel = int(rng.choice([1, 3]))
            if padding == "circular" and shape[1] < kernel // 2 + 1:
                padding = "same"
            kwargs.update(kernel_size=kernel, padding=padding)
        return cls(int(rng.choice([2, 4, 6])), **kwargs)

    return make


def _pad_conv(rng, shape):
    return lip.PadConv2D(
        int(rng.choice([2, 4])),
        int(rng.choice([1, 2, 3])),
        strides=int(rng.choice([1, 1, 2])),
        padding=str(rng.choice(PAD_CONV_PADDINGS)),
        activation=_activation(rng),
        k_coef_lip=_k(rng),
        kernel_initializer=_init(rng),
        bias_initializer=_bias(rng),
    )


def _conv_transpose(cls):
    def make(rng, shape):
        strides = int(rng.choice([1, 2])) if shape[1] <= 4 else 1
        kwargs = {"k_coef_lip": _k(rng)} if cls is lip.SpectralConv2DTranspose else {}
        return cls(
            int(rng.choice([2, 4])),
            int(rng.choice([1, 2, 3])),
            strides=strides,
            padding="same",
            activation=_activation(rng),
            kernel_initializer=_init(rng),
            bias_initializer=_bias(rng),
            **kwargs,
        )

    return make


def _sequence(cls):
    """A 1-D convolution on the pixels of an image as a sequence: Reshape, the conv ("same", stride 1), Reshape."""

    def make(rng, shape):
        _, height, width, channels = shape
        filters = int(rng.choice([2, 4]))
        kwargs = {"k_coef_lip": _k(rng)} if cls is lip.SpectralConv1D else {}
        padding = "same" if cls is lip.SpectralConv1D else str(rng.choice(["same", "causal"]))
        conv = cls(
            filters,
            int(rng.choice([1, 2, 3])),
            padding=padding,
            activation=_activation(rng),
            kernel_initializer=_init(rng),
            bias_initializer=_bias(rng),
            **kwargs,
        )
        return keras.Sequential(
            [
                keras.Input(shape[1:]),
                keras.layers.Reshape((height * width, channels)),
                conv,
                keras.layers.Reshape((height, width, filters)),
            ]
        )

    return make


def _padding(rng, shape):
    if shape[1] < 2 or shape[2] < 2:
        return None
    return lip.Padding2D(int(rng.choice([1, 2])) if min(shape[1:3]) > 2 else 1, mode=str(rng.choice(PAD_MODES)))


def _padded_conv(rng, shape):
    """An exported PadConv2D: Padding2D then a valid Conv2D (the walk fuses the pair)."""
    if shape[1] < 2 or shape[2] < 2:
        return None
    return keras.Sequential(
        [
            keras.Input(shape[1:]),
            lip.Padding2D(1, mode=str(rng.choice(PAD_MODES))),
            keras.layers.Conv2D(
                int(rng.choice([2, 4])),
                3,
                strides=int(rng.choice([1, 2])),
                padding="valid",
                activation=_activation(rng),
                kernel_initializer=_init(rng),
            ),
        ]
    )


LAYERS = [
    # deel_lip_ext.layers
    Entry("SpectralDense", "vector", _dense_like(lip.SpectralDense), (lip.SpectralDense,)),
    Entry("FrobeniusDense", "vector", _dense_like(lip.FrobeniusDense), (lip.FrobeniusDense,)),
    Entry(
        "BjorckDense",
        "vector",
        lambda rng, s: lip.BjorckDense(int(rng.choice([2, 4])), k_coef_lip=_k(rng), activation=_activation(rng)),
        (lip.BjorckDense,),
    ),
    Entry("SpectralConv2D", "image", _conv_like(lip.SpectralConv2D), (lip.SpectralConv2D,)),
    Entry("FrobeniusConv2D", "image", _conv_like(lip.FrobeniusConv2D), (lip.FrobeniusConv2D,)),
    Entry("BCOPConv2D", "image", _conv_like(lip.BCOPConv2D, True), (lip.BCOPConv2D, lip.StackedOrthogonal)),
    Entry("RKOConv2D", "image", _conv_like(lip.RKOConv2D, True), (lip.RKOConv2D,)),
    Entry("OSSNConv2D", "image", _conv_like(lip.OSSNConv2D, True), (lip.OSSNConv2D,)),
    Entry("SVCMConv2D", "image", _conv_like(lip.SVCMConv2D, True), (lip.SVCMConv2D, callbacks.SVCMProjection)),
    Entry("AOCConv2D", "image", _conv_like(lip.AOCConv2D, True), (lip.AOCConv2D,)),
    Entry("AOCConv2DTranspose", "image", _conv_like(lip.AOCConv2DTranspose, True), (lip.AOCConv2DTranspose,)),
    Entry("GroupSort2", "vector", _even_channels(lip.GroupSort2), (lip.GroupSort2, lip.GroupSort)),
    Entry("GroupSort2-image", "image", _even_channels(lip.GroupSort2), (lip.GroupSort2,)),
    Entry("FullSort", "vector", lambda rng, s: lip.FullSort(k_coef_lip=_k(rng)), (lip.FullSort,)),
    Entry("MaxMin", "vector", _even_channels(lip.MaxMin), (lip.MaxMin,)),
    Entry("MaxMin-image", "image", _even_channels(lip.MaxMin), (lip.MaxMin,)),
    Entry("MaxMinHalves", "vector", _even_channels(lip.MaxMinHalves), (lip.MaxMinHalves,)),
    Entry("MaxMinHalves-image", "image", _even_channels(lip.MaxMinHalves), (lip.MaxMinHalves,)),
    Entry("CReLU", "vector", lambda rng, s: lip.CReLU(k_coef_lip=_k(rng)), (lip.CReLU,)),
    Entry(
        "Householder",
        "vector",
        _even_channels(lip.Householder, theta_initializer=keras.initializers.RandomUniform(0, 6.3)),
        (lip.Householder,),
    ),
    Entry("ScaledAveragePooling2D", "image", _pooling(lip.ScaledAveragePooling2D), (lip.ScaledAveragePooling2D,)),
    Entry(
        "ScaledL2NormPooling2D",
        "image",
        _pooling(lip.ScaledL2NormPooling2D),
        (lip.ScaledL2NormPooling2D, lip.ScaledL2NormPooling),
    ),
    Entry("GroupSort2L2NormPooling2D", "image", _sorted_pairs_pooling, (lip.GroupSort2L2NormPooling2D,)),
    Entry("ConvGroupSort2Conv2D", "image", _conv_sort_conv, (lip.ConvGroupSort2Conv2D,)),
    Entry("DenseGroupSort2Dense", "vector", _dense_sort_dense, (lip.DenseGroupSort2Dense,)),
    Entry(
        "ScaledGlobalAveragePooling2D",
        "image",
        _global(lip.ScaledGlobalAveragePooling2D),
        (lip.ScaledGlobalAveragePooling2D,),
    ),
    Entry(
        "ScaledGlobalL2NormPooling2D",
        "image",
        _global(lip.ScaledGlobalL2NormPooling2D),
        (lip.ScaledGlobalL2NormPooling2D,),
    ),
    Entry("InvertibleDownSampling", "image", _downsampling, (lip.InvertibleDownSampling,)),
    Entry("InvertibleUpSampling", "image", _upsampling, (lip.InvertibleUpSampling,)),
    Entry("CircularPadding2D", "image", lambda rng, s: lip.CircularPadding2D(1), (lip.CircularPadding2D,)),
    Entry("LInfDistDense", "vector", _linf_dense, (lip.LInfDistDense,)),
    Entry("LInfDistConv2D", "image", _linf_conv, (lip.LInfDistConv2D,)),
    Entry("LogitScale", "vector", lambda rng, s: lip.LogitScale(), (lip.LogitScale,)),
    Entry(
        "LiResNetBlock",
        "image",
        lambda rng, s: lip.LiResNetBlock(
            int(rng.choice([1, 3])),
            str(rng.choice(["same", "circular"])),
            kernel_initializer=_init(rng),
            k_coef_lip=_k(rng),
        ),
        (lip.LiResNetBlock,),
    ),
    Entry("ChordDense", "vector", _dense_like(lip.ChordDense), (lip.ChordDense,)),
    Entry(
        "LipResidual",
        "vector",
        lambda rng, s: lip.LipResidual(
            lip.SpectralDense(s[-1], k_coef_lip=_k(rng), kernel_initializer=_init(rng)), float(rng.normal())
        ),
        (lip.LipResidual,),
    ),
    Entry("LayerCentering", "image", lambda rng, s: lip.LayerCentering(), (lip.LayerCentering,)),
    Entry("BatchCentering", "vector", lambda rng, s: lip.BatchCentering(), (lip.BatchCentering,)),
    Entry("AOLDense", "vector", _dense_like(lip.AOLDense), (lip.AOLDense,)),
    Entry("AOLConv2D", "image", _conv_like(lip.AOLConv2D), (lip.AOLConv2D,)),
    Entry("SLLDense", "vector", _residual(lip.SLLDense), (lip.SLLDense,)),
    Entry("SLLConv2D", "image", _residual(lip.SLLConv2D), (lip.SLLConv2D,)),
    Entry("CPLDense", "vector", _residual(lip.CPLDense), (lip.CPLDense,)),
    Entry("CPLConv2D", "image", _residual(lip.CPLConv2D), (lip.CPLConv2D,)),
    Entry("PadConv2D", "image", _pad_conv, (lip.PadConv2D,)),
    Entry(
        "SpectralConv2DTranspose",
        "image",
        _conv_transpose(lip.SpectralConv2DTranspose),
        (lip.SpectralConv2DTranspose,),
    ),
    Entry("SpectralConv1D", "image", _sequence(lip.SpectralConv1D), (lip.SpectralConv1D,)),
    Entry("Padding2D", "image", _padding, (lip.Padding2D,)),
    # stock Keras layers
    Entry("Dense", "vector", _stock_dense),
    Entry("Conv2D", "image", _stock_conv),
    Entry("Conv2DTranspose", "image", _conv_transpose(keras.layers.Conv2DTranspose)),
    Entry("Conv1D", "image", _sequence(keras.layers.Conv1D)),
    Entry("Padding2D+Conv2D", "image", _padded_conv),
    Entry("ReLU", "vector", lambda rng, s: keras.layers.ReLU(negative_slope=float(rng.choice([0.0, 0.3, 1.5])))),
    Entry("LeakyReLU", "vector", lambda rng, s: keras.layers.LeakyReLU(negative_slope=float(rng.choice([0.2, 2.0])))),
    Entry("Activation", "vector", lambda rng, s: keras.layers.Activation(_activation(rng))),
    Entry("Dropout", "vector", lambda rng, s: keras.layers.Dropout(0.5)),
    Entry("Rescaling", "vector", lambda rng, s: keras.layers.Rescaling(float(rng.uniform(-3, 3)), offset=0.5)),
    Entry("LayerNormalization", "vector", lambda rng, s: keras.layers.LayerNormalization()),
    Entry(
        "MaxPooling2D",
        "image",
        lambda rng, s: keras.layers.MaxPooling2D(
            int(rng.choice([2, 3])), strides=int(rng.choice([1, 2])), padding="same"
        ),
    ),
    Entry(
        "AveragePooling2D",
        "image",
        lambda rng, s: (
            keras.layers.AveragePooling2D(
                2, strides=int(rng.choice([1, 2])), padding=str(rng.choice(["same", "valid"]))
            )
            if s[1] >= 2
            else None
        ),
    ),
    Entry("GlobalAveragePooling2D", "image", lambda rng, s: keras.layers.GlobalAveragePooling2D()),
    Entry("GlobalMaxPooling2D", "image", lambda rng, s: keras.layers.GlobalMaxPooling2D()),
    Entry("UpSampling2D", "image", lambda rng, s: keras.layers.UpSampling2D(2) if s[1] <= 4 else None),
    Entry("ZeroPadding2D", "image", lambda rng, s: keras.layers.ZeroPadding2D(1) if s[1] <= 6 else None),
    Entry("Flatten", "image", lambda rng, s: keras.layers.Flatten()),
    # deel_lip_ext.zoo
    Entry(
        "NearestUpSampling2D",
        "image",
        lambda rng, s: (
            NearestUpSampling2D(2, isometric=bool(rng.random() < 0.5), k_coef_lip=_k(rng)) if s[1] <= 4 else None
        ),
        (NearestUpSampling2D,),
    ),
]


def _kind(shape):
    return "image" if len(shape) == 4 else "vector"


def _apply_layer(rng, tensor):
    shape = tuple(tensor.shape)
    candidates = [entry for entry in LAYERS if entry.kind == _kind(shape)]
    for _ in range(20):
        entry = candidates[rng.integers(len(candidates))]
        layer = entry.make(rng, shape)
        if layer is not None:
            try:
                return layer(tensor)
            except ValueError:  # a configuration the layer refuses for this shape
                continue
    return tensor


def _apply_op(rng, tensor):
    choice = rng.integers(6)
    if choice == 0:
        return tensor * float(rng.choice([-2.5, 0.5, 3.0]))
    if choice == 1:
        return tensor / float(rng.choice([0.5, 4.0]))
    if choice == 2:
        return -tensor + 1.0
    if choice == 3:
        return ops.relu(tensor)
    if choice == 4 and _kind(tuple(tensor.shape)) == "vector" and tensor.shape[-1] % 2 == 0:
        return keras.layers.Flatten()(ops.reshape(tensor, (-1, 2, tensor.shape[-1] // 2)))
    return ops.tanh(tensor)


def _merge(rng, a, b):
    if tuple(a.shape) != tuple(b.shape):
        return a
    choice = rng.integers(7)
    merges = [
        keras.layers.Add(),
        keras.layers.Subtract(),
        keras.layers.Average(),
        keras.layers.Maximum(),
        keras.layers.Minimum(),
        keras.layers.Concatenate(),
    ]
    if choice < len(merges):
        return merges[choice]([a, b])
    return ops.add(a, b)


def _branch(rng, tensor, broadcast=False):
    """Two branches from `tensor`, merged; sometimes one is a (N, 1) branch broadcast against the other."""
    left = _apply_layer(rng, tensor)
    if _kind(tuple(tensor.shape)) == "vector" and (broadcast or rng.random() < 0.4):
        width = int(rng.choice([4, 8, 16]))
        narrow = keras.layers.Dense(1, kernel_initializer=_init(rng))(tensor)
        wide = keras.layers.Dense(width, kernel_initializer=_init(rng))(tensor)
        merge = [keras.layers.Add(), keras.layers.Average(), keras.layers.Maximum()][rng.integers(3)]
        return merge([narrow, wide]) if rng.random() < 0.7 else ops.add(wide, narrow)
    right = _apply_layer(rng, tensor)
    return _merge(rng, left, right)


def _shared(rng, tensor):
    width = tensor.shape[-1]
    layer = (
        lip.SpectralDense(width, k_coef_lip=_k(rng), kernel_initializer=_init(rng))
        if rng.random() < 0.5
        else keras.layers.Dense(width, kernel_initializer=_init(rng))
    )
    if _kind(tuple(tensor.shape)) == "image":
        layer = keras.layers.Conv2D(width, 3, padding="same", kernel_initializer=_init(rng))
    if rng.random() < 0.5:
        return layer(layer(tensor))
    return _merge(rng, layer(tensor), layer(_apply_op(rng, tensor)))


def _nested(rng, tensor):
    inner_input = keras.Input(tuple(tensor.shape)[1:])
    inner = _apply_layer(rng, inner_input)
    if rng.random() < 0.5:
        inner = _apply_layer(rng, inner)
    return keras.Model(inner_input, inner)(tensor)


STEEP_ACTIVATIONS = ["selu", "gelu", "silu", "hard_silu"]


def random_model(seed: int, focus: str | None = None) -> keras.Model:
    """A random small model (Sequential or functional) from the seed.

    `focus` narrows the draw for the tests that check that the fuzzer can fail: "broadcast" (a
    vector model whose first block merges a broadcast (N, 1) branch), "activation" (a chain of
    constrained dense layers with steep activations) or "trained" (AOL then Frobenius dense layers, whose
    exact norms move with training).
    """
    rng = np.random.default_rng(seed)
    keras.utils.set_random_seed(seed)
    image = focus is None and rng.random() < 0.45
    shape = (
        (int(rng.choice([4, 6, 8])),) * 2 + (int(rng.choice([1, 2, 4])),) if image else (int(rng.choice([4, 6, 8])),)
    )
    inputs = keras.Input(shape)
    if focus == "broadcast":
        return keras.Model(inputs, _branch(rng, inputs, broadcast=True))
    if focus == "activation":
        tensor = inputs
        for _ in range(2):
            activation = STEEP_ACTIVATIONS[rng.integers(len(STEEP_ACTIVATIONS))]
            tensor = lip.SpectralDense(6, activation=activation, bias_initializer=_bias(rng))(tensor)
        return keras.Model(inputs, tensor)
    if focus == "trained":
        hidden = lip.AOLDense(6, bias_initializer=_bias(rng))(inputs)
        return keras.Model(inputs, lip.FrobeniusDense(4, bias_initializer=_bias(rng))(hidden))
    if rng.random() < 0.25:  # Sequential: a chain of single-input layers
        tensor, layers = inputs, []
        for _ in range(int(rng.integers(2, 5))):
            before = tensor
            tensor = _apply_layer(rng, tensor)
            if tensor is not before:
                layers.append(tensor._keras_history.operation)
        return keras.Sequential([keras.Input(shape)] + layers) if layers else keras.Sequential([keras.Input(shape)])
    tensor = inputs
    for _ in range(int(rng.integers(2, 5))):
        action = rng.random()
        if action < 0.45:
            tensor = _apply_layer(rng, tensor)
        elif action < 0.6:
            tensor = _apply_op(rng, tensor)
        elif action < 0.8:
            tensor = _branch(rng, tensor)
        elif action < 0.9:
            tensor = _shared(rng, tensor)
        else:
            tensor = _nested(rng, tensor)
    if rng.random() < 0.5 and _kind(tuple(tensor.shape)) == "image":
        tensor = keras.layers.Flatten()(tensor)
    return keras.Model(inputs, tensor)


# ---------------------------------------------------------------- lower bounds of the true constant


def _flat(model, x):
    y = model(x, training=False)
    return ops.reshape(y, (ops.shape(x)[0], -1))


def _norm(v, norm, axes):
    return ops.max(ops.abs(v), axis=axes) if norm == "linf" else ops.sqrt(ops.sum(ops.square(v), axis=axes))


def _output_dim(model, x):
    return int(np.prod(model.compute_output_shape((1,) + tuple(x.shape[1:]))[1:]))


def jacobians(model, x):
    """Input Jacobians (N, out, in) at the points x, float64, from one batched backward pass.

    Each point is repeated once per output entry and each copy's gradient of its own output entry
    is one Jacobian row (no per-model tracing); zeros where the output does not depend on the input.
    """
    return batch_jacobian(lambda inputs: model(inputs, training=False), x).astype(np.float64)


def jacobian_norm(jac, norm):
    """Largest operator norm of the Jacobians (l_inf: max absolute row sum; L2: spectral norm)."""
    if norm == "linf":
        return float(np.max(np.sum(np.abs(jac), axis=2)))
    return float(np.max(np.linalg.svd(jac, compute_uv=False)[:, 0]))


def pair_search(model, x, norm, rng, steps=4, step_size=0.05):
    """Best ||f(a) - f(b)|| / ||a - b|| found by gradient ascent on the ratio from pairs around x.

    Uses len(x) * output size / 2 pairs (a and b in one batch of the size `jacobians` used:
    every call of a model then has one batch shape, traced once).
    """
    n = len(x) * _output_dim(model, x) // 2
    starts = x[rng.integers(len(x), size=n)] + rng.normal(scale=0.3, size=(n,) + x.shape[1:]).astype("float32")
    pairs = np.concatenate([starts, starts + rng.normal(scale=0.05, size=starts.shape).astype("float32")])
    axes = tuple(range(1, len(x.shape)))

    def ratios(points):
        out = _flat(model, points)
        ratio = _norm(out[:n] - out[n:], norm, 1) / ops.maximum(_norm(points[:n] - points[n:], norm, axes), 1e-12)
        return ratio, ratio

    best = 0.0
    for _ in range(steps):
        _, ratio, grad = value_and_input_gradient(ratios, pairs)
        best = max(best, float(np.max(to_numpy(ratio))))
        grad = to_numpy(grad)
        if not np.any(grad):  # the output does not depend on the input
            break
        pairs = pairs + step_size * grad / (np.max(np.abs(grad), axis=axes, keepdims=True) + 1e-12)
    return best


@dataclasses.dataclass
class Outcome:
    seed: int
    norm: str
    bound: float | None  # None: refused
    lower: float = 0.0
    refusal: str = ""

    @property
    def violated(self):
        return self.bound is not None and self.lower > self.bound * (1 + REL_TOL) + 1e-6


def check_model(model, norms, seed):
    """Outcomes of `model` for each norm: its bound (or refusal, a ValueError) and the best lower bound found."""
    rng = np.random.default_rng(seed + 7)
    x = rng.normal(size=(4,) + tuple(model.inputs[0].shape[1:])).astype("float32")
    outcomes, jac = [], None
    for norm in norms:
        try:
            bound = model_lipschitz_bound(model, norm)
        except ValueError as error:
            outcomes.append(Outcome(seed, norm, None, refusal=str(error)))
            continue
        jac = jacobians(model, x) if jac is None else jac
        lower = max(jacobian_norm(jac, norm), pair_search(model, x, norm, rng))
        outcomes.append(Outcome(seed, norm, bound, lower))
    return outcomes


def _for_each_seed(seeds, check, replay):
    """`check(seed)` for every seed, each in a fresh Keras session; any unexpected exception is a bug, raised
    again with the seed and `replay` (the call that rebuilds the seed's model, "{seed}" standing for it)."""
    for seed in seeds:
        try:
            check(seed)
        except Exception as error:
            raise AssertionError(
                f"seed {seed}: {type(error).__name__}: {error} (replay: {replay.format(seed=seed)})"
            ) from error
        finally:
            keras.backend.clear_session(free_memory=False)


def fuzz(seeds, norms=("l2", "linf"), focus=None):
    """Outcomes of every seed and norm; raises with the seed of any unexpected exception."""
    outcomes = []
    _for_each_seed(
        seeds,
        lambda seed: outcomes.extend(check_model(random_model(seed, focus), norms, seed)),
        "random_model({seed})",
    )
    return outcomes


def _bounds_or_refusals(model, norms):
    """`model_lipschitz_bound` in each norm, computed for its side effect: every cache of a bound filled."""
    for norm in norms:
        try:
            model_lipschitz_bound(model, norm)
        except ValueError:
            pass


def train_far(model, seed, learning_rate=0.05, epochs=3):
    """A few epochs of Adam at a large `learning_rate` on 32 random inputs and targets (3 x a normal draw of
    the output's shape): weights, power-iteration states and running means far from their initialization.
    A model whose output depends on no trainable weight (e.g. only a `LogitScale`, an identity) stays as is."""
    if not model.trainable_weights:
        return
    rng = np.random.default_rng(seed + 13)
    shape = tuple(8 if n is None else n for n in model.inputs[0].shape[1:])  # any-size models: 8 x 8 images
    x = rng.normal(size=(32,) + shape).astype("float32")
    targets = keras.tree.map_structure(
        lambda y: (3 * rng.normal(size=(32,) + tuple(y.shape[1:]))).astype("float32"), model(x[:1], training=False)
    )
    model.compile(keras.optimizers.Adam(learning_rate), loss="mse")
    try:
        model.fit(x, targets, epochs=epochs, batch_size=8, verbose=0)
    except ValueError as error:
        if "No gradients provided" not in str(error):
            raise


def fuzz_trained(seeds, norms=("l2", "linf"), learning_rate=0.05, focus=None):
    """`fuzz` on trained models: each model's bounds computed once (every cached bound now stale), then
    `train_far`, then `check_model`: what training changes (kernels, CPL/SLL power-iteration vectors,
    `BatchCentering` running means, caches) must be in the bound."""
    outcomes = []

    def check(seed):
        model = random_model(seed, focus)
        _bounds_or_refusals(model, norms)
        train_far(model, seed, learning_rate)
        outcomes.extend(check_model(model, norms, seed))

    _for_each_seed(seeds, check, f"train_far(random_model({{seed}}, {focus!r}), {{seed}})")
    return outcomes


def fuzz_exports(seeds, norms=("l2", "linf"), any_size=False, trained=False):
    """Outcomes of the `vanilla_model` export of every seed's model (`random_model`, or with `any_size`
    `random_any_size_model` at spatial sizes 7 and 8), whose outputs must be the model's (to 1e-5 relative):
    {"outcomes": the exports' `check_model` / `check_at_sizes` outcomes, "exported": seeds exported, "refused":
    {seed: message} of the exports refused (ValueError)}; raises with the seed on a mismatch or an unexpected
    exception. `trained`: each model goes through `train_far` first (folded running means, moved kernels)."""
    build = random_any_size_model if any_size else random_model
    results = {"outcomes": [], "exported": [], "refused": {}}

    def check(seed):
        model = build(seed)
        if trained:
            train_far(model, seed)
        try:
            exported = vanilla_model(model)
        except ValueError as error:
            results["refused"][seed] = str(error)
            return
        shape, rng = tuple(model.inputs[0].shape[1:]), np.random.default_rng(seed + 11)
        for x_shape in sorted({tuple(size if n is None else n for n in shape) for size in (7, 8)}):
            x = rng.normal(size=(8,) + x_shape).astype("float32")
            expected, actual = to_numpy(model(x, training=False)), to_numpy(exported(x, training=False))
            gap, scale = np.abs(actual - expected).max(), max(1.0, float(np.abs(expected).max()))
            assert gap <= 1e-5 * scale, f"the export computes another function: gap {gap} at {x_shape}"
        results["outcomes"].extend((check_at_sizes if any_size else check_model)(exported, norms, seed))
        results["exported"].append(seed)

    replay = f"model = {build.__name__}({{seed}}); " + ("train_far(model, {seed}); " if trained else "")
    _for_each_seed(seeds, check, replay + "vanilla_model(model)")
    return results


# ---------------------------------------------------------------- models of any input size, layouts, subclasses


class LouderSpectralConv2D(lip.SpectralConv2D):
    """A library layer subclass whose `call` is not the library's (100x the output): must be refused."""

    def call(self, inputs, training=None):
        return 100.0 * super().call(inputs, training=training)


class ScaledModel(keras.Model):
    """A functional model subclass whose `call` scales the graph's output by 100: must be refused."""

    def call(self, inputs, training=None, mask=None):
        return 100.0 * super().call(inputs, training=training, mask=mask)


def _any_size_layer(rng, channels_first, spatial):
    """A layer that accepts inputs of every spatial size (channels_first: stock layers in that layout); a "valid"
    convolution drawn for a known `spatial` size smaller than its kernel gets "same" (the same draws)."""
    data_format = "channels_first" if channels_first else "channels_last"
    filters, kernel = int(rng.choice([1, 2, 3])), int(rng.choice([1, 2, 3]))
    stock = dict(kernel_initializer=_init(rng), bias_initializer=_bias(rng), data_format=data_format)
    # Channels-first convolutions are refused by the stock table: draw them rarely.
    choice = (
        int(rng.integers(3, 7))
        if channels_first and rng.random() < 0.8
        else int(rng.integers(7 if channels_first else 9))
    )
    if channels_first and choice < 3 and not runs_channels_first_convolutions():
        choice += 3  # a pooling or an upsampling instead: this machine cannot run the convolution (same draws)
    if choice == 0:
        padding = "same" if channels_first else _fitting(str(rng.choice(["same", "valid"])), kernel, spatial)
        return keras.layers.Conv2D(filters, kernel, padding=padding, **stock)  # channels-first inputs are 2x2
    if choice == 1:
        return keras.layers.Conv2D(filters, kernel, strides=2, padding="same", **stock)
    if choice == 2:
        return keras.layers.Conv2DTranspose(filters, kernel, strides=int(rng.choice([1, 2])), padding="same", **stock)
    if choice == 3:
        return keras.layers.AveragePooling2D(2, strides=1, padding="same", data_format=data_format)
    if choice == 4:
        return keras.layers.MaxPooling2D(2, padding="same", data_format=data_format)
    if choice == 5:
        return keras.layers.UpSampling2D(2, data_format=data_format)
    if choice == 6:
        return keras.layers.Activation(str(rng.choice(["relu", "tanh", "gelu"])))
    padding = _fitting(str(rng.choice(["same", "valid"])), kernel, spatial)
    conv = LouderSpectralConv2D if rng.random() < 0.15 else lip.SpectralConv2D
    return conv(filters, kernel, padding=padding, kernel_initializer=_init(rng), bias_initializer=_bias(rng))


def _fitting(padding, kernel, spatial):
    """`padding`, or "same" where a "valid" kernel would not fit the known spatial size."""
    return "same" if padding == "valid" and any(n is not None and n < kernel for n in spatial) else padding


def _pooled_residual(rng, tensor, channels_first):
    """`tensor`, or (one time in two, channels-last) `tensor` + its "same" max pooling: with a window of 64
    the pooled map is 1 x 1 at every size the fuzzer runs and the merge copies it to every pixel, a broadcast
    that unknown sizes hide from the graph (both operands are (None, None, None, C)). Own generator: other
    draws unchanged."""
    if channels_first or rng.random() >= 0.5:
        return tensor
    pooled = keras.layers.MaxPooling2D(64 if rng.random() < 0.75 else 1, padding="same")(tensor)
    return keras.layers.Add()([tensor, pooled])


def random_any_size_model(seed: int) -> keras.Model:
    """A random chain of layers on images of unknown size (None, None, C) (or, one time in three, of a fixed
    size), sometimes channels-first, sometimes ending with a global average pooling, sometimes with a library
    layer subclass or a model class that overrides `call` (both must be refused). Checked at several sizes by
    `check_at_sizes`."""
    rng = np.random.default_rng(seed)
    keras.utils.set_random_seed(seed)
    channels_first = rng.random() < 0.3
    # Channels-first: more channels than pixels per row, so that C x H and H x W differ (a layout bug shows).
    channels = 6 if channels_first else int(rng.choice([1, 2]))
    size = int(rng.choice([2, 3] if channels_first else [7, 8])) if rng.random() < 0.4 else None
    inputs = keras.Input((channels, size, size) if channels_first else (size, size, channels))
    tensor = inputs
    for _ in range(int(rng.integers(1, 4))):
        spatial = tensor.shape[2:] if channels_first else tensor.shape[1:-1]
        tensor = _any_size_layer(rng, channels_first, spatial)(tensor)
    tensor = _pooled_residual(np.random.default_rng(seed + 5), tensor, channels_first)
    if rng.random() < (0.7 if channels_first else 0.4):
        data_format = "channels_first" if channels_first else "channels_last"
        tensor = keras.layers.GlobalAveragePooling2D(data_format=data_format)(tensor)
    model_class = ScaledModel if rng.random() < 0.15 else keras.Model
    return model_class(inputs, tensor)


def check_at_sizes(model, norms, seed, sizes=(7, 8)):
    """Outcomes of an any-size model: its bound against the Jacobians at each spatial size in `sizes` (a model
    of fixed size: at its size only). The sizes are large enough for three "valid" 3x3 convolutions."""
    rng = np.random.default_rng(seed + 11)
    shape = tuple(model.inputs[0].shape[1:])
    outcomes = []
    for norm in norms:
        try:
            bound = model_lipschitz_bound(model, norm)
        except ValueError as error:
            outcomes.append(Outcome(seed, norm, None, refusal=str(error)))
            continue
        lower = 0.0
        for x_shape in sorted({tuple(size if n is None else n for n in shape) for size in sizes}):
            x = rng.normal(size=(2,) + x_shape).astype("float32")
            lower = max(lower, jacobian_norm(jacobians(model, x), norm))
        outcomes.append(Outcome(seed, norm, bound, lower))
    return outcomes


def fuzz_any_size(seeds, norms=("l2", "linf")):
    """`fuzz` for `random_any_size_model` / `check_at_sizes`."""
    outcomes = []
    _for_each_seed(
        seeds,
        lambda seed: outcomes.extend(check_at_sizes(random_any_size_model(seed), norms, seed)),
        "random_any_size_model({seed})",
    )
    return outcomes
