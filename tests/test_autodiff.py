"""The backend autodiff module: input and parameter gradients, double backprop, compiled functions.

Every expected value is analytic (a linear map has a known gradient), so each test fails if a
backend differentiates the wrong thing, detaches what must stay attached, or freezes variables.
"""

import keras
import numpy as np
import pytest
from keras import ops

from deel_lip_ext import _autodiff


def _rng(seed=0):
    return np.random.default_rng(seed)


def _dense(n_in=5, units=3, seed=1):
    layer = keras.layers.Dense(units)
    layer.build((None, n_in))
    rng = _rng(seed)
    layer.kernel.assign(rng.normal(size=(n_in, units)).astype("float32"))
    layer.bias.assign(rng.normal(size=(units,)).astype("float32"))
    return layer


def test_input_gradient_of_a_linear_map_is_its_kernel_times_the_weights():
    layer = _dense()
    x = _rng(2).normal(size=(4, 5)).astype("float32")
    weights = ops.convert_to_tensor(_rng(3).normal(size=(3,)).astype("float32"))

    def per_sample(inputs):
        y = layer(inputs)
        return ops.sum(y * weights, axis=-1), y

    values, y, gradient = _autodiff.value_and_input_gradient(per_sample, x)
    kernel = ops.convert_to_numpy(layer.kernel)
    assert tuple(gradient.shape) == x.shape
    weights = ops.convert_to_numpy(weights)
    np.testing.assert_allclose(ops.convert_to_numpy(gradient), np.tile(kernel @ weights, (4, 1)), rtol=1e-5)
    np.testing.assert_allclose(ops.convert_to_numpy(y), x @ kernel + ops.convert_to_numpy(layer.bias), rtol=1e-5)
    np.testing.assert_allclose(ops.convert_to_numpy(values), ops.convert_to_numpy(y) @ weights, rtol=1e-5)


def test_input_gradient_of_a_nonlinear_function_is_per_sample():
    x = _rng(4).normal(size=(3, 6)).astype("float32")
    _, _, gradient = _autodiff.value_and_input_gradient(lambda t: (ops.sum(ops.sin(t) * t, axis=1), None), x)
    np.testing.assert_allclose(ops.convert_to_numpy(gradient), np.cos(x) * x + np.sin(x), rtol=1e-5, atol=1e-6)


def test_input_gradient_is_zero_where_the_values_do_not_depend_on_the_input():
    x = np.ones((2, 3), "float32")
    constant = ops.convert_to_tensor(np.full((2,), 2.0, "float32"))
    values, _, gradient = _autodiff.value_and_input_gradient(lambda t: (constant, None), x)
    np.testing.assert_array_equal(ops.convert_to_numpy(gradient), np.zeros((2, 3), "float32"))
    np.testing.assert_array_equal(ops.convert_to_numpy(values), [2.0, 2.0])


def test_parameter_gradients_of_a_linear_map():
    layer = _dense()
    unused = keras.Variable(np.ones((2,), "float32"))
    x = _rng(5).normal(size=(4, 5)).astype("float32")
    upstream = _rng(6).normal(size=(4, 3)).astype("float32")

    def objective():
        y = layer(x)
        return ops.sum(y * ops.convert_to_tensor(upstream)), y

    loss, y, (kernel_gradient, bias_gradient, unused_gradient) = _autodiff.parameter_gradients(
        objective, [layer.kernel, layer.bias, unused]
    )
    np.testing.assert_allclose(ops.convert_to_numpy(kernel_gradient), x.T @ upstream, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(ops.convert_to_numpy(bias_gradient), upstream.sum(axis=0), rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(ops.convert_to_numpy(unused_gradient), np.zeros((2,), "float32"))
    np.testing.assert_allclose(float(ops.convert_to_numpy(loss)), np.sum(ops.convert_to_numpy(y) * upstream), rtol=1e-5)


@pytest.mark.parametrize("differentiable", [True, False])
def test_double_backprop_through_the_input_gradient(differentiable):
    # f_i(x) = (x_i W + b) c, so grad_x f_i = W c for every sample and the penalty
    # P = sum_i ||W c||^2 = n ||W c||^2 has dP/dW = 2 n (W c) c^T (and 0 w.r.t. b).
    layer = _dense()
    x = _rng(7).normal(size=(4, 5)).astype("float32")
    c = ops.convert_to_tensor(_rng(8).normal(size=(3,)).astype("float32"))

    def penalty():
        _, _, gradient = _autodiff.value_and_input_gradient(
            lambda t: (ops.sum(layer(t) * c, axis=-1), None), x, differentiable=differentiable
        )
        return ops.sum(ops.square(gradient)), gradient

    _, gradient, (kernel_gradient, bias_gradient) = _autodiff.parameter_gradients(penalty, [layer.kernel, layer.bias])
    wc = ops.convert_to_numpy(layer.kernel) @ ops.convert_to_numpy(c)
    np.testing.assert_allclose(ops.convert_to_numpy(gradient), np.tile(wc, (4, 1)), rtol=1e-5)
    expected = 2 * 4 * np.outer(wc, ops.convert_to_numpy(c)) if differentiable else np.zeros((5, 3))
    np.testing.assert_allclose(ops.convert_to_numpy(kernel_gradient), expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(ops.convert_to_numpy(bias_gradient), np.zeros((3,), "float32"))


def test_compiled_function_reads_the_variables_current_values():
    layer = _dense()
    forward = _autodiff.graph_function(lambda t: layer(t), layer.variables)
    x = _rng(9).normal(size=(2, 5)).astype("float32")
    np.testing.assert_allclose(ops.convert_to_numpy(forward(x)), ops.convert_to_numpy(layer(x)), rtol=1e-6)
    layer.kernel.assign(2.0 * layer.kernel)  # a compiled function must not have frozen the old kernel
    np.testing.assert_allclose(ops.convert_to_numpy(forward(x)), ops.convert_to_numpy(layer(x)), rtol=1e-6)


def test_compiled_function_writes_assigned_variables_back():
    counter = keras.Variable(np.zeros((), "float32"))
    scale = keras.Variable(np.full((), 3.0, "float32"))

    def step(x):
        counter.assign(counter + 1.0)
        return x * scale

    run = _autodiff.graph_function(step, [counter, scale])
    x = np.arange(3, dtype="float32")
    np.testing.assert_allclose(ops.convert_to_numpy(run(x)), 3.0 * x)
    np.testing.assert_allclose(ops.convert_to_numpy(run(x)), 3.0 * x)
    assert float(ops.convert_to_numpy(counter)) == 2.0
    assert float(ops.convert_to_numpy(scale)) == 3.0


def test_input_gradient_inside_a_compiled_function():
    layer = _dense()
    c = ops.convert_to_tensor(_rng(10).normal(size=(3,)).astype("float32"))

    def gradient_at(x):
        return _autodiff.value_and_input_gradient(lambda t: (ops.sum(layer(t) * c, axis=-1), None), x)[2]

    compiled = _autodiff.graph_function(gradient_at, layer.variables)
    x = _rng(11).normal(size=(2, 5)).astype("float32")
    wc = ops.convert_to_numpy(layer.kernel) @ ops.convert_to_numpy(c)
    np.testing.assert_allclose(ops.convert_to_numpy(compiled(x)), np.tile(wc, (2, 1)), rtol=1e-5)


def test_input_gradient_when_the_backend_disabled_gradients():
    # Keras runs predict/evaluate with gradients off (torch.no_grad); attacks still need them.
    layer = _dense()
    c = ops.convert_to_tensor(_rng(12).normal(size=(3,)).astype("float32"))
    x = _rng(13).normal(size=(2, 5)).astype("float32")

    def gradient():
        return _autodiff.value_and_input_gradient(lambda t: (ops.sum(layer(t) * c, axis=-1), None), x)[2]

    if keras.backend.backend() == "torch":
        import torch

        with torch.no_grad():
            result = gradient()
    else:
        result = gradient()
    np.testing.assert_allclose(
        ops.convert_to_numpy(result),
        np.tile(ops.convert_to_numpy(layer.kernel) @ ops.convert_to_numpy(c), (2, 1)),
        rtol=1e-5,
    )


def test_unsupported_backend_is_named_in_the_error(monkeypatch):
    monkeypatch.setattr(keras.backend, "backend", lambda: "numpy")
    with pytest.raises(NotImplementedError, match="'numpy'.*KERAS_BACKEND"):
        _autodiff.value_and_input_gradient(lambda t: (t, None), np.ones((1, 2), "float32"))
