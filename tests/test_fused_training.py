"""The Lipschitz `Sequential` runs a GroupSort2 followed by an L2-norm pooling as one function.

`Sequential.call` replaces the two layers by `sorted_then_l2_norm_pooled` (the sort and the square
in one pass each way). It must be the same function as the two layers in a row: the same values,
the same gradients (GroupSort2's permutation Jacobian at ties included), the same second
derivatives (tulip's gradient penalty), the same training trajectory; and it must leave every
case it does not cover to `keras.Sequential`, and the bounds to the graph of the two layers.
"""

import keras
import numpy as np
import pytest
from _backend import (
    compiled,
    gradient_of_weighted_gradient,
    gradients,
    parameter_gradients,
    recorded_calls,
    to_numpy,
)
from keras import ops

import deel_lip_ext.model as model_module
from deel_lip_ext import layers as lip
from deel_lip_ext.model import Sequential
from deel_lip_ext.model_bound import check_graph_call
from deel_lip_ext.utils import model_lipschitz_bound


def _random(shape, seed=0):
    return np.random.default_rng(seed).normal(size=shape).astype("float32")


def _layers(size, pool_size, sort_k=1.0, pool_k=1.0, eps=1e-6, channels=6):
    """Stock convolution (deterministic: no parametrization state), the sort and the pooling, a dense head."""
    return [
        keras.Input((size, size, 3)),
        keras.layers.Conv2D(channels, 3, padding="same"),
        lip.GroupSort2(k_coef_lip=sort_k),
        lip.ScaledL2NormPooling2D(pool_size, k_coef_lip=pool_k, eps_grad_sqrt=eps),
        keras.layers.Flatten(),
        keras.layers.Dense(4),
    ]


def _one_by_one(model):
    """The model's layers called in a row, as separate layers (no fusion)."""

    def run(inputs):
        for layer in model.layers:
            inputs = layer(inputs)
        return inputs

    return run


@pytest.fixture
def fusion_calls(monkeypatch):
    """How many times `Sequential.call` ran the fused function (a test can fail if it silently stops)."""
    return recorded_calls(monkeypatch, model_module, "sorted_then_l2_norm_pooled", lambda inputs, sort, pool: sort.name)


def _with_tied_pairs(model):
    """Give channels 2i and 2i + 1 of the convolution the same kernel and bias: every pair ties."""
    conv = model.layers[0]
    kernel, bias = conv.get_weights()
    kernel[..., 1::2], bias[1::2] = kernel[..., 0::2], bias[0::2]
    conv.set_weights([kernel, bias])


@pytest.mark.filterwarnings("ignore:Layer .* is not known to be 1-Lipschitz")
@pytest.mark.parametrize("pool_size, size", [((2, 2), 8), ((3, 2), 7), (2, 5)])
@pytest.mark.parametrize("sort_k, pool_k, eps", [(1.0, 1.0, 1e-6), (0.7, 2.5, 0.3)])
@pytest.mark.parametrize("ties", [False, True])
def test_fused_call_has_the_values_and_gradients_of_the_two_layers(
    pool_size, size, sort_k, pool_k, eps, ties, fusion_calls
):
    model = Sequential(_layers(size, pool_size, sort_k, pool_k, eps))
    if ties:
        _with_tied_pairs(model)
    x, separate = _random((3, size, size, 3)), _one_by_one(model)
    upstream = _random((3, 4), seed=1)
    np.testing.assert_allclose(to_numpy(model(x, training=True)), to_numpy(separate(x)), rtol=1e-6, atol=1e-6)
    assert fusion_calls, "the fused function was not used"
    # Gradient with respect to the input.
    fused_gradient = gradients(lambda z: model(z, training=True), x, upstream=upstream)[0]
    separate_gradient = gradients(separate, x, upstream=upstream)[0]
    np.testing.assert_allclose(fused_gradient, separate_gradient, rtol=1e-5, atol=1e-6)
    # Gradients with respect to the weights.
    weights = model.trainable_variables

    def loss(function):
        return lambda: (ops.sum(function(x) * ops.convert_to_tensor(upstream)), None)

    fused_weight_gradients = parameter_gradients(loss(lambda z: model(z, training=True)), weights)[2]
    separate_weight_gradients = parameter_gradients(loss(separate), weights)[2]
    for fused, reference in zip(fused_weight_gradients, separate_weight_gradients):
        np.testing.assert_allclose(to_numpy(fused), to_numpy(reference), rtol=1e-5, atol=1e-6)


@pytest.mark.filterwarnings("ignore:Layer .* is not known to be 1-Lipschitz")
def test_tied_pairs_get_a_permutation_jacobian_not_a_split_one(fusion_calls):
    """At a tie the gradient of each entry stays its own (GroupSort2's permutation), as the two layers give."""
    model = Sequential(_layers(4, (2, 2)))
    _with_tied_pairs(model)
    x = _random((2, 4, 4, 3), seed=2) + 2.0
    sort, pooling = model.layers[1], model.layers[2]
    conv_output = to_numpy(model.layers[0](x))
    upstream = _random((2, 2, 2, 6), seed=3)
    fused = gradients(
        lambda z: model_module.sorted_then_l2_norm_pooled(z, sort, pooling), conv_output, upstream=upstream
    )
    separate = gradients(lambda z: pooling(sort(z)), conv_output, upstream=upstream)
    np.testing.assert_allclose(fused[0], separate[0], rtol=1e-6, atol=1e-7)
    assert np.abs(fused[0][..., 0::2] - fused[0][..., 1::2]).max() > 1e-3  # not halves of one gradient


@pytest.mark.filterwarnings("ignore:Layer .* is not known to be 1-Lipschitz")
def test_fused_call_has_the_second_derivatives_of_the_two_layers(fusion_calls):
    model = Sequential(_layers(6, (2, 2), sort_k=0.8, pool_k=1.3, eps=0.05))
    x, upstream = _random((2, 6, 6, 3), seed=4), _random((2, 4), seed=5)
    fused = gradient_of_weighted_gradient(lambda z: model(z, training=True), x, upstream)
    separate = gradient_of_weighted_gradient(_one_by_one(model), x, upstream)
    assert fusion_calls
    np.testing.assert_allclose(fused, separate, rtol=1e-4, atol=1e-6)
    assert np.abs(separate).max() > 1e-3


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_fused_function_keeps_the_range_of_the_two_layers_in_low_precision(dtype):
    """Entries of 100 (window sums of squares 40000 < 65504) stay finite in float16, as in the two layers."""
    sort, pooling = lip.GroupSort2(dtype=dtype), lip.ScaledL2NormPooling2D((2, 2), dtype=dtype)
    x = ops.cast(ops.convert_to_tensor(100.0 + _random((2, 4, 4, 4), seed=11)), dtype)
    fused = to_numpy(ops.cast(model_module.sorted_then_l2_norm_pooled(x, sort, pooling), "float32"))
    separate = to_numpy(ops.cast(pooling(sort(x)), "float32"))
    assert np.all(np.isfinite(fused)) and np.all(np.isfinite(separate))
    np.testing.assert_allclose(fused, separate, rtol=1e-2)


def _trained_weights(model, steps=3):
    x, y = _random((16, 8, 8, 3), seed=6), np.random.default_rng(7).integers(0, 4, size=16)
    model.compile(
        optimizer=keras.optimizers.SGD(0.1), loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    )
    for _ in range(steps):
        model.train_on_batch(x, y)
    return [to_numpy(w) for w in model.weights]


def _spectral_layers():
    return [keras.Input((8, 8, 3)), lip.SpectralConv2D(6, 3, padding="same")] + _layers(8, (2, 2))[2:]


@pytest.mark.filterwarnings("ignore:Layer .* is not known to be 1-Lipschitz")
def test_training_follows_the_same_trajectory_as_keras_sequential(fusion_calls):
    ours, reference = Sequential(_spectral_layers()), keras.Sequential(_spectral_layers())
    reference.set_weights(ours.get_weights())
    for trained, expected in zip(_trained_weights(ours), _trained_weights(reference)):
        np.testing.assert_allclose(trained, expected, rtol=2e-5, atol=2e-6)
    assert fusion_calls  # traced into the train step


@pytest.mark.filterwarnings("ignore:Layer .* is not known to be 1-Lipschitz")
def test_compiled_call_is_fused_and_exact(fusion_calls):
    model = Sequential(_layers(8, (2, 2)))
    x = _random((2, 8, 8, 3), seed=8)
    forward = compiled(lambda z: model(z, training=True), model.variables)
    np.testing.assert_allclose(to_numpy(forward(x)), to_numpy(_one_by_one(model)(x)), rtol=1e-6, atol=1e-6)
    assert fusion_calls


@pytest.mark.filterwarnings("ignore:Layer .* is not known to be 1-Lipschitz")
def test_cases_the_fusion_does_not_cover_run_as_keras_sequential(fusion_calls):
    x = _random((2, 8, 8, 3), seed=9)
    # Inputs of another dtype than the Input's: converted as Keras converts them, same values.
    model = Sequential(_layers(8, (2, 2)))
    np.testing.assert_allclose(
        to_numpy(model(x.astype("float64"))), to_numpy(_one_by_one(model)(x)), rtol=1e-6, atol=1e-6
    )
    # A sort not followed by an L2-norm pooling, and a pooling not preceded by a pairwise sort.
    unfused = Sequential(
        [
            keras.Input((8, 8, 3)),
            keras.layers.Conv2D(6, 3, padding="same"),
            lip.GroupSort2(),
            lip.ScaledL2NormPooling2D((2, 2)),
            lip.GroupSort(n=3),
            lip.ScaledL2NormPooling2D((2, 2)),
        ]
    )
    fusion_calls.clear()
    unfused(x)
    assert fusion_calls == [unfused.layers[1].name]
    # Layers of different dtypes: the sort's autocast matters, so the two layers run as they are.
    mixed = Sequential(
        [
            keras.Input((8, 8, 3)),
            keras.layers.Conv2D(6, 3, padding="same"),
            lip.GroupSort2(dtype="float64"),
            lip.ScaledL2NormPooling2D((2, 2)),
        ]
    )
    fusion_calls.clear()
    mixed(x)
    assert not fusion_calls


@pytest.mark.filterwarnings("ignore:Layer .* is not known to be 1-Lipschitz")
def test_bounds_still_walk_the_graph_of_the_two_layers():
    model = Sequential(_layers(8, (2, 2), sort_k=0.5, pool_k=3.0))
    check_graph_call(model)  # the call override is marked as computing its graph
    # The same layers in a keras.Sequential (no override, no fusion): the same graph, the same bound.
    reference = keras.Sequential([keras.Input((8, 8, 3))] + model.layers)
    assert model_lipschitz_bound(model) == pytest.approx(model_lipschitz_bound(reference), rel=1e-6)
    x = _random((2, 8, 8, 3), seed=10)
    np.testing.assert_allclose(to_numpy(model(x)), to_numpy(reference(x)), rtol=1e-6, atol=1e-6)

    class Overriding(Sequential):
        def call(self, inputs, training=None, mask=None):
            return super().call(inputs, training=training, mask=mask) * 2.0

    with pytest.raises(ValueError, match="overrides `call`"):
        check_graph_call(Overriding(_layers(8, (2, 2))))
