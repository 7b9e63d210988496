"""`ConvGroupSort2Conv2D`: Conv2D, GroupSort2, Conv2D (and a fused pooling) computed without the sort's pass.

The layer must compute what the layers in a row compute (the composed convolution plus a ReLU
branch, and for "same" padding the border correction, alone or inside the pooling), keep their
Lipschitz constant exactly, refuse what it does not compute, and `vanilla_export` must use it
only where the chain is the same function and cheaper.
"""

import keras
import numpy as np
import pytest
from _backend import assert_same_export, assert_serves_as_tf_saved_model, chained_model, to_numpy

from deel_lip_ext import layers as lip
from deel_lip_ext.layers.sort_fold import composed_conv_kernel, folded_sorts_between_convs
from deel_lip_ext.utils import model_lipschitz_bound


def _random(shape, seed=0, scale=1.0):
    return (scale * np.random.default_rng(seed).normal(size=shape)).astype("float32")


def _convs(channels, middle, out, kernels, padding, seed):
    """Two built stock convolutions with random kernels and biases (`channels` -> `middle` -> `out`)."""
    first = keras.layers.Conv2D(middle, kernels[0], padding=padding)
    second = keras.layers.Conv2D(out, kernels[1], padding=padding)
    first.build((None, None, None, channels))
    second.build((None, None, None, middle))
    for index, conv in enumerate((first, second)):
        kernel, bias = conv.get_weights()
        conv.set_weights([_random(kernel.shape, seed + 2 * index, 0.3), _random(bias.shape, seed + 2 * index + 1)])
    return first, second


CASES = [  # size, channels, middle, out, kernels, padding, pooling (pool_size, pair_layout) or None
    ((8, 10), 3, 4, 6, (3, 3), "same", ((2, 2), "halves")),
    ((12, 12), 2, 6, 4, (5, 3), "same", ((2, 3), "adjacent")),
    ((9, 9), 3, 4, 2, (3, 5), "same", (3, "adjacent")),
    ((10, 12), 1, 8, 4, ((3, 5), (3, 3)), "same", ((2, 2), "adjacent")),
    ((10, 11), 3, 8, 4, (3, 3), "valid", ((2, 2), "halves")),
    ((8, 8), 1, 2, 2, (3, 3), "same", None),
    ((9, 7), 2, 4, 3, (5, 5), "same", None),
    ((7, 9), 3, 4, 5, (1, 3), "valid", None),
]


@pytest.mark.parametrize("size, channels, middle, out, kernels, padding, pooling", CASES)
@pytest.mark.parametrize("sort_k", [1.0, 0.6])
def test_folded_layer_equals_the_layers_in_a_row(size, channels, middle, out, kernels, padding, pooling, sort_k):
    first, second = _convs(channels, middle, out, kernels, padding, seed=len(CASES) * middle + out)
    layers = [first, lip.GroupSort2(k_coef_lip=sort_k), second]
    if pooling is not None:
        pool_size, pair_layout = pooling
        layers.append(
            lip.GroupSort2L2NormPooling2D(pool_size, k_coef_lip=0.9, sort_k_coef_lip=1.3, pair_layout=pair_layout)
        )
    x = _random((3, *size, channels), seed=7)
    x[0, :, 0, :] = 0.0  # an edge of zeros: the border correction must still hold
    in_a_row = keras.Sequential([keras.Input(x.shape[1:])] + layers)
    folded = lip.ConvGroupSort2Conv2D(
        first.get_config(), second.get_config(), sort_k, None if pooling is None else layers[-1].get_config()
    )
    folded.build(x.shape)
    folded.first.set_weights(first.get_weights())
    folded.second.set_weights(second.get_weights())
    expected = to_numpy(in_a_row(x))
    np.testing.assert_allclose(to_numpy(folded(x)), expected, rtol=1e-5, atol=1e-5 * np.abs(expected).max())
    assert tuple(folded.compute_output_shape(x.shape)) == expected.shape
    # The same bound as the layers in a row: the exact constants of the two convolutions at their sizes.
    for norm in ("l2", "linf"):
        assert folded.lipschitz_constant(norm, x.shape) == pytest.approx(
            model_lipschitz_bound(in_a_row, norm), rel=1e-9
        )


def test_composed_kernel_is_the_two_valid_convolutions_in_a_row():
    first, second = _random((3, 2, 2, 4), seed=1), _random((2, 3, 4, 3), seed=2)
    x = _random((2, 7, 8, 2), seed=3)
    in_a_row = keras.ops.conv(keras.ops.conv(x, first, padding="valid"), second, padding="valid")
    composed = composed_conv_kernel(first, second)
    assert tuple(composed.shape) == (4, 4, 2, 3)
    np.testing.assert_allclose(to_numpy(keras.ops.conv(x, composed, padding="valid")), to_numpy(in_a_row), atol=1e-4)


@pytest.mark.parametrize(
    "first, second, pooling, message",
    [
        ({"strides": 2}, {}, None, "strides 1"),
        ({"activation": "relu"}, {}, None, "no activation"),
        ({"filters": 3}, {}, None, "even number of filters"),
        ({"padding": "valid"}, {}, None, "same padding"),
        ({"kernel_size": 2}, {"kernel_size": 2}, None, "odd kernel sizes"),
        ({}, {}, {"window_layout": "channels"}, "window_layout='spatial'"),
    ],
)
def test_folded_layer_refuses_what_it_does_not_compute(first, second, pooling, message):
    base = {"filters": 4, "kernel_size": 3, "padding": "same"}
    pooling_config = None if pooling is None else lip.GroupSort2L2NormPooling2D(**pooling).get_config()
    with pytest.raises(ValueError, match=message):
        lip.ConvGroupSort2Conv2D({**base, **first}, {**base, "filters": 2, **second}, pooling=pooling_config)


def test_folded_layer_refuses_an_input_smaller_than_the_first_kernel():
    conv = {"filters": 4, "kernel_size": 5, "padding": "same"}
    with pytest.raises(ValueError, match="at least the first kernel"):
        lip.ConvGroupSort2Conv2D(conv, {**conv, "kernel_size": 3}).build((None, 4, 8, 3))


def test_folded_layer_refuses_an_output_the_pooled_correction_does_not_cover():
    conv = {"filters": 4, "kernel_size": 3, "padding": "same"}
    folded = lip.ConvGroupSort2Conv2D(conv, conv, pooling=lip.GroupSort2L2NormPooling2D(2).get_config())
    with pytest.raises(ValueError, match="multiple of the window"):
        folded.build((None, 9, 8, 3))


def _w2_like(functional=False, channels=3):
    """The first block of W2: two "same" convolutions from an RGB-like input, GroupSort2, L2-norm pooling."""
    layers = [
        lip.SpectralConv2D(48, 3, padding="same"),  # 48 channels: the fold costs 0.66 of the two convolutions
        lip.GroupSort2(),
        lip.SpectralConv2D(48, 3, padding="same"),
        lip.GroupSort2(),
        lip.ScaledL2NormPooling2D((2, 2)),
        keras.layers.Flatten(),
        lip.SpectralDense(3),
    ]
    return chained_model(keras.Input((8, 8, channels)), layers, functional)


@pytest.mark.parametrize("functional", [False, True], ids=["sequential", "functional"])
def test_export_folds_a_cheaper_chain_and_keeps_function_and_bound(functional, tmp_path):
    model = _w2_like(functional)
    x = _random((4, 8, 8, 3), seed=5)
    plain = model.vanilla_export()
    types = [type(layer).__name__ for layer in plain.layers]
    assert types.count("ConvGroupSort2Conv2D") == 1 and "GroupSort2L2NormPooling2D" not in types
    assert_same_export(model, plain, x, tmp_path, bound_rel=1e-9)


def test_export_keeps_a_chain_the_fold_would_not_make_cheaper():
    # 8 input channels: the fold would cost 0.90 of the two convolutions' multiply-adds (more than 3/4).
    plain = _w2_like(channels=8).vanilla_export()
    assert "ConvGroupSort2Conv2D" not in [type(layer).__name__ for layer in plain.layers]


def test_fold_rewrite_needs_a_known_size_and_float32():
    first, second = _convs(3, 48, 48, (3, 3), "same", seed=3)
    sort, pooling = lip.GroupSort2(), lip.GroupSort2L2NormPooling2D()
    chain = [first, sort, second, pooling]
    assert type(folded_sorts_between_convs(chain, (None, 8, 8, 3))[-1]).__name__ == "ConvGroupSort2Conv2D"
    assert folded_sorts_between_convs(chain, None) == chain
    assert folded_sorts_between_convs(chain, (None, None, None, 3)) == chain
    half = keras.layers.Conv2D.from_config({**second.get_config(), "dtype": "mixed_float16"})
    half.build((None, None, None, 48))
    assert folded_sorts_between_convs([first, sort, half, pooling], (None, 8, 8, 3))[2] is half


def test_folded_export_runs_as_a_tensorflow_saved_model(tmp_path):
    model = _w2_like()
    plain = model.vanilla_export()
    assert "ConvGroupSort2Conv2D" in [type(layer).__name__ for layer in plain.layers]
    assert_serves_as_tf_saved_model(model, plain, _random((2, 8, 8, 3), seed=6), tmp_path)
