"""Every parametrized layer is k-Lipschitz for its own padding and stride.

The exported layer's operator is built independently here (the exported
stock Keras model applied to unit impulses, bias removed) and its exact
largest singular value checked against k.
"""

import keras
import numpy as np
import pytest

from deel_lip_ext.layers import FrobeniusConv2D, FrobeniusDense, SpectralConv2D, SpectralDense
from deel_lip_ext.model import vanilla_model


def _train_a_few_steps(model, steps=3):
    x_shape = (16,) + tuple(model.inputs[0].shape[1:])
    y_shape = (16,) + tuple(model.outputs[0].shape[1:])
    rng = np.random.default_rng(0)
    model.compile(keras.optimizers.Adam(1e-2), "mse")
    for _ in range(steps):
        model.train_on_batch(rng.normal(size=x_shape).astype("float32"), rng.normal(size=y_shape).astype("float32"))


def _exported_operator(model):
    """Dense matrix of the exported model's linear map (rows: inputs)."""
    exported = vanilla_model(model)
    in_shape = tuple(model.inputs[0].shape[1:])
    size = int(np.prod(in_shape))
    impulses = np.eye(size, dtype="float32").reshape((size,) + in_shape)
    zero = keras.ops.convert_to_numpy(exported(np.zeros((1,) + in_shape, "float32")))
    return (keras.ops.convert_to_numpy(exported(impulses)) - zero).reshape(size, -1)


def _single_layer_model(layer, input_shape):
    return keras.Sequential([keras.Input(input_shape), layer])


CONV_CASES = [
    # (c_in, c_out, kernel, stride, size)
    (1, 1, 1, 1, 6),
    (1, 8, 3, 1, 6),
    (3, 16, 3, 2, 6),
    (8, 4, 5, 1, 6),
    (16, 16, 3, 1, 5),
    (4, 32, 5, 2, 6),
    (64, 8, 3, 1, 4),
    (2, 64, 1, 2, 4),
    (32, 32, 3, 2, 4),
]
# k = 1 always runs; the other constants run with the slow tests.
K_VALUES = [pytest.param(0.5, marks=pytest.mark.slow), 1.0, pytest.param(5.0, marks=pytest.mark.slow)]
CONV_PADDINGS = ["same", "valid", "circular"]
# k = 1 on every case; k = 0.5 and 5 (slow tests) on one padding per case, rotating over the paddings.
CONV_GRID = [
    pytest.param(padding, *case, k, marks=[pytest.mark.slow] if k != 1.0 else [])
    for index, case in enumerate(CONV_CASES)
    for padding in CONV_PADDINGS
    for k in (0.5, 1.0, 5.0)
    if k == 1.0 or padding == CONV_PADDINGS[(index + int(k)) % 3]
]


@pytest.mark.parametrize("layer_cls", [SpectralConv2D, FrobeniusConv2D])
@pytest.mark.parametrize("padding, c_in, c_out, kernel, stride, size, k", CONV_GRID)
def test_conv_exported_operator_norm_at_most_k(layer_cls, padding, c_in, c_out, kernel, stride, size, k):
    if padding == "valid" and kernel > size:
        pytest.skip("kernel larger than the input")
    model = _single_layer_model(
        layer_cls(c_out, kernel, strides=stride, padding=padding, k_coef_lip=k), (size, size, c_in)
    )
    _train_a_few_steps(model)
    sigma_max = np.linalg.svd(_exported_operator(model), compute_uv=False).max()
    assert sigma_max <= k * (1 + 1e-3)


@pytest.mark.parametrize("shape", [(16, 16), (32, 8), (8, 32), (64, 64), (1, 5), (5, 1)])
@pytest.mark.parametrize("k", [0.5, 1.0, 5.0])
def test_spectral_dense_is_k_times_orthogonal(shape, k):
    model = _single_layer_model(SpectralDense(shape[1], k_coef_lip=k), (shape[0],))
    _train_a_few_steps(model)
    sv = np.linalg.svd(_exported_operator(model), compute_uv=False)
    assert sv.max() <= k * (1 + 1e-3)
    np.testing.assert_allclose(sv, k, atol=1e-2 * k)


@pytest.mark.parametrize("shape", [(16, 16), (32, 8), (8, 32), (10, 1)])
@pytest.mark.parametrize("k", [0.5, 1.0, 5.0])
def test_frobenius_dense(shape, k):
    whole = _single_layer_model(FrobeniusDense(shape[1], disjoint_neurons=False, k_coef_lip=k), (shape[0],))
    _train_a_few_steps(whole)
    assert np.linalg.svd(_exported_operator(whole), compute_uv=False).max() <= k * (1 + 1e-3)

    disjoint = _single_layer_model(FrobeniusDense(shape[1], disjoint_neurons=True, k_coef_lip=k), (shape[0],))
    _train_a_few_steps(disjoint)
    # Each neuron is k-Lipschitz on its own: every column of the operator has norm k.
    np.testing.assert_allclose(np.linalg.norm(_exported_operator(disjoint), axis=0), k, rtol=1e-5)


def test_zero_padding_correction_is_a_real_bound_where_deel_lip_is_not():
    # A kernel whose reshaped matrix has norm 1 (all taps equal): its "same"
    # conv on 28x28 has norm close to 3; deel-lip's average-overlap factor
    # (28 / 82 per axis) leaves it above 1, our max-overlap factor does not.
    from deel_lip_ext.parametrizations import conv_lipschitz_coefficient
    from deel_lip_ext.utils import _conv_sv

    kernel = np.full((3, 3, 1, 1), 1.0 / 3.0, dtype="float32")
    _, sigma = _conv_sv(kernel, (28, 28, 1), (1, 1), "same")
    deel_lip_coef = 28 * 28 / ((3 * 28 - 2) * (3 * 28 - 2))
    assert sigma * deel_lip_coef**0.5 > 1.01
    assert sigma * conv_lipschitz_coefficient((28, 28), (3, 3), (1, 1), "same") <= 1.0
