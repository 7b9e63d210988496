"""`SpectralDense` in training multiplies a batch by the RKO's two factors, never forming the kernel.

A kernel (m, n) with m >= 2n is orthonormalized on its Gram side and is `base @ factor`
(`reshaped_kernel_orthogonalization(..., as_factors=True)`). When the batch has fewer rows than
the kernel, a training call computes `(x @ base) @ factor`. It must be the same function as
`x @ kernel`: the same values, the same gradients (kernel, bias, inputs), the same stored
power-iteration vector; and it must leave every other case (large batches, low precision, no
Björck, kernels not on the Gram side, a subclass's own kernel, inference) to the kernel itself.
"""

import keras
import numpy as np
import pytest
from _backend import input_gradient, parameter_gradients, recorded_calls, to_numpy
from keras import ops

import deel_lip_ext.layers.base as layer_base
from deel_lip_ext import layers as lip


def _random(shape, seed=0):
    return np.random.default_rng(seed).normal(size=shape).astype("float32")


def _dense(fan_in, units, spread, **kwargs):
    """A built `SpectralDense` whose raw kernel is its orthogonal initialization plus `spread` times noise."""
    layer = lip.SpectralDense(units, **kwargs)
    layer.build((None, fan_in))
    layer.kernel.assign(to_numpy(layer.kernel) + spread * _random((fan_in, units), seed=1))
    layer.bias.assign(_random((units,), seed=2))
    return layer


@pytest.fixture
def factor_calls(monkeypatch):
    """For each RKO a layer computed, whether it asked for the two factors (a test can fail if the path
    silently stops)."""
    return recorded_calls(
        monkeypatch, layer_base, "reshaped_kernel_orthogonalization", lambda *args, as_factors=False: as_factors
    )


def _with_kernel(layer):
    """`x @ kernel + bias` with the layer's materialized training kernel (and its power-iteration update)."""

    def run(inputs):
        kernel, updates = layer.compute_kernel()
        layer._store_state(updates)
        inputs = ops.cast(inputs, layer.compute_dtype)  # what Keras does before a layer's `call`
        return ops.matmul(inputs, ops.cast(kernel, layer.compute_dtype)) + ops.cast(layer.bias, layer.compute_dtype)

    return run


@pytest.mark.parametrize(
    "fan_in, units, batch, spread, k_coef_lip",
    # Near the orthogonal initialization one Björck round ends the iteration (the factor multiplies the raw
    # kernel itself); with spread 0.5 the kernel needs several rounds; batches of 1 and of 3-D inputs too.
    [(300, 40, 32, 0.01, 1.0), (300, 40, 32, 0.5, 1.0), (128, 16, 1, 0.5, 0.7), (96, 8, (4, 5), 0.2, 2.0)],
)
def test_factored_call_has_the_values_and_gradients_of_the_kernel(
    fan_in, units, batch, spread, k_coef_lip, factor_calls
):
    layer = _dense(fan_in, units, spread, k_coef_lip=k_coef_lip)
    rows = batch if isinstance(batch, tuple) else (batch,)
    x = _random(rows + (fan_in,), seed=3)
    upstream = _random(rows + (units,), seed=4)
    start = to_numpy(layer.u)
    outputs, stored = [], []
    for function in (lambda inputs: layer(inputs, training=True), _with_kernel(layer)):
        layer.u.assign(start)
        outputs.append(to_numpy(function(x)))
        stored.append(to_numpy(layer.u))
    assert factor_calls == [True, False]  # the layer's own call, then the reference's kernel
    scale = np.abs(outputs[1]).max()
    np.testing.assert_allclose(outputs[0], outputs[1], rtol=0, atol=2e-6 * scale)
    np.testing.assert_allclose(stored[0], stored[1], rtol=0, atol=1e-6)

    def weighted(function):
        def loss():
            layer.u.assign(start)
            return ops.sum(function(x) * ops.convert_to_tensor(upstream)), None

        return [to_numpy(g) for g in parameter_gradients(loss, [layer.kernel, layer.bias])[2]]

    for got, expected in zip(weighted(lambda inputs: layer(inputs, training=True)), weighted(_with_kernel(layer))):
        np.testing.assert_allclose(got, expected, rtol=0, atol=1e-5 * np.abs(expected).max())
    layer.u.assign(start)
    got = input_gradient(lambda inputs: layer(inputs, training=True), x, upstream)
    layer.u.assign(start)
    expected = input_gradient(_with_kernel(layer), x, upstream)
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-5 * np.abs(expected).max())


@pytest.mark.parametrize(
    "fan_in, units, batch, kwargs",
    [
        (300, 40, 300, {}),  # as many rows as the kernel: forming it is cheaper
        (300, 40, 512, {}),
        (60, 40, 8, {}),  # not on the Gram side (60 < 2 * 40)
        (300, 40, 32, {"eps_bjorck": None}),  # spectral normalization only: no factor
        (300, 40, 32, {"dtype": "mixed_float16"}),  # the kernel is rounded to the compute dtype
    ],
)
def test_other_cases_multiply_by_the_kernel(fan_in, units, batch, kwargs, factor_calls):
    layer = _dense(fan_in, units, 0.2, **kwargs)
    x = _random((batch, fan_in), seed=5)
    start = to_numpy(layer.u)
    got = to_numpy(layer(x, training=True))
    layer.u.assign(start)
    expected = to_numpy(_with_kernel(layer)(x))
    assert True not in factor_calls
    np.testing.assert_allclose(got.astype("float32"), expected.astype("float32"), rtol=0, atol=1e-6)


def test_a_subclass_computing_its_own_kernel_multiplies_by_it(factor_calls):
    class HalfKernel(lip.SpectralDense):
        def compute_kernel(self):
            kernel, updates = super().compute_kernel()
            return 0.5 * kernel, updates

    layer = HalfKernel(40)
    layer.build((None, 300))
    x = _random((16, 300), seed=9)
    start = to_numpy(layer.u)
    got = to_numpy(layer(x, training=True))
    layer.u.assign(start)
    assert True not in factor_calls
    np.testing.assert_allclose(got, to_numpy(_with_kernel(layer)(x)), rtol=0, atol=1e-6)


def test_inference_and_exports_use_the_kernel(factor_calls):
    layer = _dense(300, 40, 0.5)
    x = _random((16, 300), seed=6)
    layer(x, training=True)
    assert factor_calls == [True]
    inferred = to_numpy(layer(x))
    exported = to_numpy(layer.vanilla_export()[0](x))
    assert factor_calls.count(True) == 1
    kernel = to_numpy(layer.effective_kernel())
    np.testing.assert_allclose(inferred, x @ kernel + to_numpy(layer.bias), rtol=0, atol=1e-5)
    np.testing.assert_allclose(exported, inferred, rtol=0, atol=1e-6)


def test_a_training_step_matches_the_kernel_path():
    # Two copies of one model trained a step on the same batch, one with its dense layer forced onto the
    # kernel path: the same loss and the same weights after the step.
    def trained(force_kernel):
        keras.utils.set_random_seed(0)
        dense = lip.SpectralDense(10)
        if force_kernel:
            dense._multiplies_factors = lambda inputs: False
        model = keras.Sequential([keras.Input((200,)), dense])
        model.compile(optimizer=keras.optimizers.SGD(0.1), loss="mse")
        loss = model.train_on_batch(_random((32, 200), seed=7), _random((32, 10), seed=8))
        return float(loss), [to_numpy(w) for w in model.weights]

    (loss, weights), (kernel_loss, kernel_weights) = trained(False), trained(True)
    assert loss == pytest.approx(kernel_loss, rel=1e-5)
    for got, expected in zip(weights, kernel_weights):
        np.testing.assert_allclose(got, expected, rtol=0, atol=1e-5)
