"""`DenseGroupSort2Dense`: Dense, GroupSort2, Dense computed as x C + c + relu(x D + d) E.

The layer must compute what the layers in a row compute, keep their Lipschitz constant exactly,
bound what it computes even when its folded weights are not the fold of its kernels, refuse what it
does not compute, and `vanilla_export` must use it only where the chain is the same function and cheaper.
"""

import keras
import numpy as np
import pytest
from _backend import assert_same_export, assert_serves_as_tf_saved_model, batch_jacobian, chained_model, to_numpy

from deel_lip_ext import layers as lip
from deel_lip_ext.lipschitz import stock_layer_lipschitz
from deel_lip_ext.layers.dense_sort_fold import fold_discrepancy, folded_dense_head, folded_sorts_between_denses
from deel_lip_ext.utils import model_lipschitz_bound


def _random(shape, seed=0, scale=1.0):
    return (scale * np.random.default_rng(seed).normal(size=shape)).astype("float32")


def _denses(inputs, middle, out, seed, use_bias=True):
    """Two built stock `Dense` layers with random kernels (and biases): `inputs` -> `middle` -> `out`."""
    first, second = keras.layers.Dense(middle, use_bias=use_bias), keras.layers.Dense(out, use_bias=use_bias)
    first.build((None, inputs))
    second.build((None, middle))
    for index, dense in enumerate((first, second)):
        dense.set_weights([_random(w.shape, seed + 2 * index + position) for position, w in enumerate(dense.weights)])
    return first, second


def _folded(first, second, sort_k, input_shape):
    folded = lip.DenseGroupSort2Dense(first.get_config(), second.get_config(), sort_k)
    folded.build(input_shape)
    folded.first.set_weights(first.get_weights())
    folded.second.set_weights(second.get_weights())
    folded.refold()
    return folded


@pytest.mark.parametrize("inputs, middle, out, use_bias", [(12, 8, 3, True), (5, 2, 1, False), (9, 6, 6, True)])
@pytest.mark.parametrize("sort_k", [1.0, 0.6])
def test_folded_layer_equals_the_layers_in_a_row(inputs, middle, out, use_bias, sort_k):
    first, second = _denses(inputs, middle, out, seed=middle + out, use_bias=use_bias)
    in_a_row = keras.Sequential([keras.Input((inputs,)), first, lip.GroupSort2(k_coef_lip=sort_k), second])
    folded = _folded(first, second, sort_k, (None, inputs))
    x = _random((64, inputs), seed=7)
    x[:8] = 0.0  # each pair is then the first layer's two biases: a tie where it has none
    expected = to_numpy(in_a_row(x))
    np.testing.assert_allclose(to_numpy(folded(x)), expected, rtol=1e-5, atol=1e-5 * np.abs(expected).max())
    assert tuple(folded.compute_output_shape(x.shape)) == expected.shape
    # The same bound as the layers in a row: the exact constants of the two kernels, times the sort's k.
    for norm in ("l2", "linf"):
        assert folded.lipschitz_constant(norm) == pytest.approx(model_lipschitz_bound(in_a_row, norm), rel=1e-6)


def test_fold_of_the_kernels_is_the_identity_of_min_and_max():
    # A one-pair head written out by hand: min(u, v) = u - relu(u - v), max(u, v) = v + relu(u - v).
    first_kernel, second_kernel = np.array([[1.0, 2.0], [3.0, -1.0]]), np.array([[0.5], [-2.0]])
    fold = folded_dense_head(first_kernel, np.array([0.1, -0.2]), second_kernel, np.array([0.3]), 2.0)
    np.testing.assert_allclose(fold["composed_kernel"], 2.0 * first_kernel @ second_kernel)
    np.testing.assert_allclose(fold["spread_kernel"], [[-1.0], [4.0]])
    np.testing.assert_allclose(fold["spread_bias"], [0.3])
    np.testing.assert_allclose(fold["taps"], [[2.0 * (-2.0 - 0.5)]])
    assert fold_discrepancy(fold, fold) == 0.0


def _largest_jacobian_norm(layer, x):
    """The largest spectral norm of `layer`'s Jacobian over the points `x` (each a sample of its own)."""
    jacobians = batch_jacobian(layer, x)  # (N, out, in)
    return max(np.linalg.norm(jacobian, 2) for jacobian in jacobians)


def test_bound_holds_for_folded_weights_changed_by_hand():
    first, second = _denses(6, 4, 2, seed=3)
    folded = _folded(first, second, 1.0, (None, 6))
    exact_bound = folded.lipschitz_constant("l2")
    # Taps scaled by 4: where a ReLU is active the Jacobian grows past the kernels' product.
    folded.taps.assign(4.0 * to_numpy(folded.taps))
    x = _random((512, 6), seed=4, scale=3.0)
    stretched = _largest_jacobian_norm(folded, x)
    assert stretched > 1.05 * exact_bound  # the change does stretch more than the exact fold's bound allows
    bound = folded.lipschitz_constant("l2")
    assert bound >= stretched
    folded.refold()
    assert folded.lipschitz_constant("l2") == pytest.approx(exact_bound, rel=1e-12)
    assert _largest_jacobian_norm(folded, x) <= exact_bound * (1 + 1e-5)


def test_bound_follows_kernels_set_after_the_fold():
    first, second = _denses(6, 4, 2, seed=5)
    folded = _folded(first, second, 1.0, (None, 6))
    folded.first.set_weights([0.25 * w for w in folded.first.get_weights()])  # the folded weights are now stale
    x = _random((256, 6), seed=6, scale=3.0)
    stretched = _largest_jacobian_norm(folded, x)  # still the function of the kernels before the change
    assert stretched > 2.0 * stock_layer_lipschitz(folded.first, "l2") * stock_layer_lipschitz(folded.second, "l2")
    assert folded.lipschitz_constant("l2") >= stretched


@pytest.mark.parametrize(
    "first, second, message",
    [
        ({"activation": "relu"}, {}, "'first' must be a Dense without activation"),
        ({}, {"activation": "tanh"}, "'second' must be a Dense without activation"),
        ({"units": 5}, {}, "even number of units"),
    ],
)
def test_folded_layer_refuses_what_it_does_not_compute(first, second, message):
    with pytest.raises(ValueError, match=message):
        lip.DenseGroupSort2Dense({"units": 4, **first}, {"units": 2, **second})


def test_config_round_trip_and_no_trainable_weight():
    folded = _folded(*_denses(7, 4, 3, seed=8), 0.5, (None, 7))
    copy = lip.DenseGroupSort2Dense.from_config(folded.get_config())
    copy.build((None, 7))
    copy.set_weights(folded.get_weights())
    x = _random((5, 7), seed=9)
    np.testing.assert_array_equal(to_numpy(copy(x)), to_numpy(folded(x)))
    assert copy.sort_k_coef_lip == 0.5 and folded.trainable_weights == []


def _head(functional=False, inputs=40, middle=16, out=3):
    """A classifier head on `inputs` features: SpectralDense(middle), GroupSort2, SpectralDense(out)."""
    layers = [lip.SpectralDense(middle), lip.GroupSort2(), lip.SpectralDense(out)]
    return chained_model(keras.Input((inputs,)), layers, functional)


@pytest.mark.parametrize("functional", [False, True], ids=["sequential", "functional"])
def test_export_folds_a_cheaper_head_and_keeps_function_and_bound(functional, tmp_path):
    model = _head(functional)
    x = _random((6, 40), seed=10)
    plain = model.vanilla_export()
    types = [type(layer).__name__ for layer in plain.layers]
    assert types.count("DenseGroupSort2Dense") == 1 and "GroupSort2" not in types
    assert_same_export(model, plain, x, tmp_path, bound_rel=1e-6)


def test_export_keeps_a_head_the_fold_would_not_make_cheaper():
    # 16 -> 16 -> 16: the fold would cost 1.5 times the two layers' multiply-adds.
    plain = _head(inputs=16, middle=16, out=16).vanilla_export()
    assert "DenseGroupSort2Dense" not in [type(layer).__name__ for layer in plain.layers]


def test_fold_rewrite_needs_stock_linear_float_layers():
    first, second = _denses(40, 16, 3, seed=11)
    sort = lip.GroupSort2()
    assert type(folded_sorts_between_denses([first, sort, second], (None, 40))[-1]).__name__ == "DenseGroupSort2Dense"
    assert folded_sorts_between_denses([first, sort, second], None) == [first, sort, second]
    half = keras.layers.Dense.from_config({**second.get_config(), "dtype": "mixed_float16"})
    half.build((None, 16))
    assert folded_sorts_between_denses([first, sort, half], (None, 40))[2] is half
    relu = keras.layers.Dense.from_config({**first.get_config(), "activation": "relu"})
    relu.build((None, 40))
    assert folded_sorts_between_denses([relu, sort, second], (None, 40))[0] is relu
    assert "DenseGroupSort2Dense" not in [
        type(layer).__name__ for layer in folded_sorts_between_denses([first, lip.GroupSort(4), second], (None, 40))
    ]


def test_folded_head_export_runs_as_a_tensorflow_saved_model(tmp_path):
    model = _head()
    plain = model.vanilla_export()
    assert "DenseGroupSort2Dense" in [type(layer).__name__ for layer in plain.layers]
    assert_serves_as_tf_saved_model(model, plain, _random((3, 40), seed=12), tmp_path)
