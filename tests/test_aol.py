"""AOLDense / AOLConv2D: exact operator norms of the exported layers after training, export, config."""

import keras
import numpy as np
import pytest
from test_layers_lipschitz import CONV_CASES, K_VALUES, _exported_operator, _single_layer_model, _train_a_few_steps

from deel_lip_ext import normalizers
from deel_lip_ext.layers import AOLConv2D, AOLDense
from deel_lip_ext.model import vanilla_model
from deel_lip_ext.spectrum import conv_operator_matrix

FAST_CONV_CASES = {(1, 8, 3, 1, 6), (3, 16, 3, 2, 6), (8, 4, 5, 1, 6), (64, 8, 3, 1, 4), (2, 64, 1, 2, 4)}
CASES = [c if c in FAST_CONV_CASES else pytest.param(*c, marks=pytest.mark.slow) for c in CONV_CASES]


@pytest.mark.parametrize("padding", ["same", "valid", "circular"])
@pytest.mark.parametrize("c_in, c_out, kernel, stride, size", CASES)
@pytest.mark.parametrize("k", K_VALUES)
def test_aol_conv_exported_operator_norm_at_most_k(padding, c_in, c_out, kernel, stride, size, k):
    if padding == "valid" and kernel > size:
        pytest.skip("kernel larger than the input")
    layer = AOLConv2D(c_out, kernel, strides=stride, padding=padding, k_coef_lip=k, kernel_initializer="glorot_normal")
    model = _single_layer_model(layer, (size, size, c_in))
    _train_a_few_steps(model)
    sigma_max = np.linalg.svd(_exported_operator(model), compute_uv=False).max()
    assert sigma_max <= k * (1 + 1e-3)
    # The certified constant is the exact norm at the build size (never below it).
    assert layer.lipschitz_constant() >= sigma_max * (1 - 1e-5)
    assert layer.lipschitz_constant() <= sigma_max * (1 + 1e-4)


@pytest.mark.parametrize("padding", ["same", "valid", "circular"])
@pytest.mark.parametrize("stride", [1, 2])
def test_aol_conv_bound_holds_for_adversarial_kernels(padding, stride):
    # Kernels with large cancelling correlations: the boundary rows of a zero-padded Gram are partial sums,
    # so this catches a rescaling that only holds for the torus Gram.
    rng = np.random.default_rng(stride)
    for trial in range(20):
        kernel = rng.normal(size=(3, 3, 2, 3)) * rng.choice([-1.0, 1.0], size=(3, 3, 1, 1)) + trial * 0.1
        scaled = keras.ops.convert_to_numpy(normalizers.aol_rescaling(keras.ops.convert_to_tensor(kernel)))
        for size in (3, 5):
            norm = np.linalg.norm(conv_operator_matrix(scaled, (size, size, 2), (stride, stride), padding), 2)
            assert norm <= 1 + 1e-9


@pytest.mark.parametrize("shape", [(16, 16), (32, 8), (8, 32), (64, 64), (1, 5), (5, 1), (64, 1)])
@pytest.mark.parametrize("k", [0.5, 1.0, 5.0])
def test_aol_dense_exported_norm_at_most_k(shape, k):
    layer = AOLDense(shape[1], k_coef_lip=k, kernel_initializer="glorot_normal")
    model = _single_layer_model(layer, (shape[0],))
    _train_a_few_steps(model)
    sigma_max = np.linalg.svd(_exported_operator(model), compute_uv=False).max()
    assert sigma_max <= k * (1 + 1e-3)
    assert layer.lipschitz_constant() >= sigma_max * (1 - 1e-5)


def test_aol_keeps_an_orthogonal_kernel():
    layer = AOLDense(8, k_coef_lip=2.0, kernel_initializer="orthogonal")
    layer.build((None, 8))
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(layer.effective_kernel()), 2.0 * keras.ops.convert_to_numpy(layer.kernel), atol=1e-5
    )
    assert layer.lipschitz_constant() == pytest.approx(2.0, rel=1e-5)


@pytest.mark.parametrize(
    "layer, shape",
    [(AOLDense(5, activation="relu"), (7,)), (AOLConv2D(4, 3, padding="circular", strides=2), (6, 6, 3))],
)
def test_aol_export_and_keras_round_trip(layer, shape, tmp_path):
    model = _single_layer_model(layer, shape)
    _train_a_few_steps(model)
    x = np.random.default_rng(1).normal(size=(4, *shape)).astype("float32")
    expected = keras.ops.convert_to_numpy(model(x))
    exported = vanilla_model(model)
    assert not any(type(lay).__module__.startswith("deel_lip_ext.layers.aol") for lay in exported.layers)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(exported(x)), expected, atol=1e-5)
    model.save(tmp_path / "aol.keras")
    loaded = keras.models.load_model(tmp_path / "aol.keras")
    np.testing.assert_allclose(keras.ops.convert_to_numpy(loaded(x)), expected, atol=1e-6)
    assert type(loaded.layers[0]) is type(layer)


def test_aol_refuses_bad_arguments():
    with pytest.raises(ValueError, match="padding"):
        AOLConv2D(4, 3, padding="reflect")
    with pytest.raises(ValueError, match="dilation_rate"):
        AOLConv2D(4, 3, dilation_rate=2)
    with pytest.raises(ValueError, match="units"):
        AOLDense(0)
    with pytest.raises(ValueError, match="k_coef_lip"):
        AOLDense(3, k_coef_lip=-1.0)
