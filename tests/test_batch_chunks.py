"""A memory-bound convolution + GroupSort2 + L2-norm pooling runs over parts of the batch (`batch_chunks`).

`Sequential.call` runs such a block in `batch_chunks(conv, inputs)` parts when that is more than one.
It must be the function of the layers called in a row on the whole batch: the same values, the same
gradients (input and weights, second derivatives included), one parametrization per call (its state
stored once), the same training trajectory; and `batch_chunks` must leave every case it does not
cover to the whole batch. The tests shrink `CHUNK_BYTES` so that small batches run in parts.
"""

import keras
import numpy as np
import pytest
from _backend import gradient_of_weighted_gradient, gradients, parameter_gradients, recorded_calls, to_numpy
from keras import ops

import deel_lip_ext.model as model_module
from deel_lip_ext import layers as lip
from deel_lip_ext.layers import batch_chunks as chunking
from deel_lip_ext.model import Sequential

BATCH, SIZE, FILTERS = 8, 12, 6
# One sample's convolution output: SIZE * SIZE * FILTERS float32 entries.
SAMPLE_BYTES = SIZE * SIZE * FILTERS * 4


def _random(shape, seed=0):
    return np.random.default_rng(seed).normal(size=shape).astype("float32")


def _model():
    """A first block as W1's (one input channel: 9 multiply-adds per output entry), then a dense head."""
    return Sequential(
        [
            keras.Input((SIZE, SIZE, 1)),
            lip.SpectralConv2D(FILTERS, 3, padding="same"),
            lip.GroupSort2(),
            lip.ScaledL2NormPooling2D((2, 2)),
            keras.layers.Flatten(),
            lip.SpectralDense(4),
        ]
    )


@pytest.fixture
def small_parts(monkeypatch):
    """Parts of two samples' convolution output: a batch of 8 runs in 4 parts."""
    monkeypatch.setattr(chunking, "CHUNK_BYTES", 2 * SAMPLE_BYTES)


@pytest.fixture
def chunked_calls(monkeypatch):
    """The number of parts of each block `Sequential.call` ran in parts (a test fails if the path stops being taken)."""
    return recorded_calls(monkeypatch, model_module, "chunked_conv_sort_pool", lambda *args, **kwargs: args[4])


def _whole_batch(model, training):
    """The model's layers called in a row on the whole batch, as separate layers."""

    def run(inputs):
        for layer in model.layers:
            inputs = layer(inputs, training=training) if layer._call_has_training_arg else layer(inputs)
        return inputs

    return run


def _with_state(model, state):
    """Reset the parametrization state (power-iteration vectors) so that two calls start from the same one."""
    for variable, value in zip(model.non_trainable_variables, state):
        variable.assign(value)


def _state(model):
    return [to_numpy(variable) for variable in model.non_trainable_variables]


def _conv(filters=FILTERS, channels=1, layer_class=lip.SpectralConv2D, **kwargs):
    conv = layer_class(filters, 3, padding="same", **kwargs)
    conv.build((None, SIZE, SIZE, channels))
    return conv


def test_parts_are_as_many_as_chunk_bytes_allow_and_divide_the_batch(small_parts):
    conv = _conv()
    assert chunking.batch_chunks(conv, ops.zeros((8, SIZE, SIZE, 1))) == 4
    assert chunking.batch_chunks(conv, ops.zeros((7, SIZE, SIZE, 1))) == 1  # no power of 2 divides 7
    assert chunking.batch_chunks(conv, ops.zeros((6, SIZE, SIZE, 1))) == 2  # 4 does not divide 6
    assert chunking.batch_chunks(conv, ops.zeros((3, SIZE, SIZE, 1))) == 1  # less than two parts of output
    assert chunking.batch_chunks(conv, ops.zeros((64, SIZE, SIZE, 1))) == 32  # parts of exactly 2 samples


def test_w1_first_block_runs_in_four_parts_of_at_least_chunk_bytes():
    conv = lip.SpectralConv2D(16, 3, padding="same")
    conv.build((None, 28, 28, 1))
    chunks = chunking.batch_chunks(conv, ops.zeros((256, 28, 28, 1)))
    output_bytes = 256 * 28 * 28 * 16 * 4
    assert chunks == 4
    assert output_bytes / chunks >= chunking.CHUNK_BYTES > output_bytes / (2 * chunks)


@pytest.mark.parametrize(
    "conv, inputs",
    [
        (lambda: _conv(channels=4), ops.zeros((8, SIZE, SIZE, 4))),  # 36 multiply-adds per output entry
        (lambda: _conv(dtype="mixed_float16"), ops.zeros((8, SIZE, SIZE, 1))),  # inputs not in the compute dtype
        (lambda: _conv(layer_class=lip.SpectralConv2DTranspose), ops.zeros((8, SIZE, SIZE, 1))),
        (lambda: _conv(layer_class=keras.layers.Conv2D), ops.zeros((8, SIZE, SIZE, 1))),  # not the library's
        (lambda: _conv(), keras.KerasTensor((None, SIZE, SIZE, 1))),  # unknown batch size
    ],
    ids=["compute-bound", "other-dtype", "transposed", "stock-conv", "unknown-batch"],
)
def test_the_whole_batch_where_parts_do_not_apply(conv, inputs, small_parts):
    assert chunking.batch_chunks(conv(), inputs) == 1


def test_a_convolution_with_its_own_call_runs_on_the_whole_batch(small_parts):
    class OwnCall(lip.SpectralConv2D):
        def call(self, inputs, training=None):
            return super().call(inputs, training=training) * 0.5

    assert chunking.batch_chunks(_conv(layer_class=OwnCall), ops.zeros((8, SIZE, SIZE, 1))) == 1


@pytest.mark.parametrize("training", [False, True])
def test_parts_give_the_values_and_gradients_of_the_whole_batch(training, small_parts, chunked_calls):
    model = _model()
    x, upstream = _random((BATCH, SIZE, SIZE, 1)), _random((BATCH, 4), seed=1)
    state, whole = _state(model), _whole_batch(model, training)
    values = to_numpy(model(x, training=training))
    assert chunked_calls == [4]
    _with_state(model, state)
    np.testing.assert_allclose(values, to_numpy(whole(x)), rtol=1e-6, atol=1e-6)
    _with_state(model, state)
    input_gradient = gradients(lambda z: model(z, training=training), x, upstream=upstream)[0]
    _with_state(model, state)
    np.testing.assert_allclose(input_gradient, gradients(whole, x, upstream=upstream)[0], rtol=1e-5, atol=1e-6)
    if not training:
        return
    weights = model.trainable_variables

    def loss(function):
        return lambda: (ops.sum(function(x) * ops.convert_to_tensor(upstream)), None)

    _with_state(model, state)
    in_parts = parameter_gradients(loss(lambda z: model(z, training=True)), weights)[2]
    _with_state(model, state)
    reference = parameter_gradients(loss(whole), weights)[2]
    for variable, parts, whole_batch in zip(weights, in_parts, reference):
        assert np.abs(to_numpy(whole_batch)).max() > 0, variable.path
        np.testing.assert_allclose(to_numpy(parts), to_numpy(whole_batch), rtol=1e-5, atol=1e-6, err_msg=variable.path)


def test_parts_give_the_second_derivatives_of_the_whole_batch(small_parts, chunked_calls):
    model = _model()
    x, upstream = _random((BATCH, SIZE, SIZE, 1), seed=2), _random((BATCH, 4), seed=3)
    state = _state(model)
    in_parts = gradient_of_weighted_gradient(lambda z: model(z, training=True), x, upstream)
    assert chunked_calls
    _with_state(model, state)
    reference = gradient_of_weighted_gradient(_whole_batch(model, True), x, upstream)
    np.testing.assert_allclose(in_parts, reference, rtol=1e-4, atol=1e-6)
    assert np.abs(reference).max() > 1e-3


def test_the_parametrization_runs_once_per_call_and_stores_its_state_once(small_parts, chunked_calls, monkeypatch):
    model = _model()
    conv = model.layers[0]
    kernels = recorded_calls(monkeypatch, conv, "compute_kernel", lambda: None)
    x, state = _random((BATCH, SIZE, SIZE, 1), seed=4), _state(model)
    model(x, training=True)
    assert chunked_calls == [4] and len(kernels) == 1
    in_parts = _state(conv)
    _with_state(model, state)
    conv(x, training=True)
    assert in_parts  # the power-iteration vector
    for parts_value, whole_value in zip(in_parts, _state(conv)):
        np.testing.assert_allclose(parts_value, whole_value, rtol=1e-6, atol=1e-7)
    assert conv._shared_kernel is None  # no kernel outlives the call


def test_training_in_parts_follows_the_whole_batch_trajectory(small_parts, monkeypatch):
    x, y = _random((BATCH, SIZE, SIZE, 1), seed=5), np.arange(BATCH) % 4
    trajectories = []
    for chunks in ("parts", "whole"):
        keras.utils.set_random_seed(0)
        model = _model()
        if chunks == "whole":
            monkeypatch.setattr(model_module, "batch_chunks", lambda layer, inputs: 1)
        model.compile(optimizer=keras.optimizers.Adam(1e-2), loss=keras.losses.SparseCategoricalCrossentropy(True))
        losses = [float(model.train_on_batch(x, y)) for _ in range(3)]
        trajectories.append((losses, [to_numpy(weight) for weight in model.weights]))
    (losses, weights), (whole_losses, whole_weights) = trajectories
    np.testing.assert_allclose(losses, whole_losses, rtol=1e-5)
    assert losses[-1] < losses[0]
    for parts, whole in zip(weights, whole_weights):
        np.testing.assert_allclose(parts, whole, rtol=1e-4, atol=1e-5)


def test_export_and_bounds_keep_reading_the_layers(small_parts, chunked_calls):
    model = _model()
    x = _random((BATCH, SIZE, SIZE, 1), seed=6)
    exported = model.vanilla_export()
    np.testing.assert_allclose(to_numpy(exported(x)), to_numpy(model(x)), rtol=1e-5, atol=1e-5)
    assert chunked_calls == [4]
