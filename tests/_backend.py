"""Backend-neutral gradients, Jacobians and rounding slack for the tests (TensorFlow, JAX, torch).

The tests never call a backend's autodiff themselves: they go through the library's `_autodiff`
(itself tested against analytic gradients in test_autodiff.py) and get numpy arrays back.
"""

import functools

import keras
import numpy as np
import pytest
from keras import ops

from deel_lip_ext import _autodiff
from deel_lip_ext.model import Model, Sequential
from deel_lip_ext.utils import model_lipschitz_bound

BACKEND = keras.backend.backend()

# `(values, aux, gradient)` of `fn(x) -> (values, aux)`: the library's own, tested in test_autodiff.py.
value_and_input_gradient = _autodiff.value_and_input_gradient


@functools.cache
def runs_channels_first_convolutions():
    """Whether this backend runs channels-first convolutions on this machine.

    TensorFlow's CPU kernels without oneDNN (its default on some CPUs, an AVX2-only EPYC among them) have no
    channels-first convolution, and Keras passes that layout to them as is (channels-first poolings did run
    there), so a channels-first convolution cannot be run there, nor its bound checked.
    """
    if BACKEND != "tensorflow":
        return True
    import tensorflow as tf  # only TensorFlow's kernels can be missing, and only its errors say so

    # A zeros kernel: the probe draws no random numbers, so the fuzzed models' weights do not depend on it.
    probe = keras.layers.Conv2D(1, 3, padding="same", data_format="channels_first", kernel_initializer="zeros")
    try:
        probe(np.zeros((1, 2, 4, 4), "float32"))
    except tf.errors.UnimplementedError:
        return False
    return True


def to_numpy(x):
    """Any backend tensor, variable or array as a numpy array (detached on torch)."""
    return ops.convert_to_numpy(x)


def input_gradient(fn, x, upstream=None):
    """Gradient of `sum(fn(x) * upstream)` with respect to `x` (a vector-Jacobian product), as numpy.

    `upstream` None sums `fn(x)`; a value of `fn(x)`'s shape weights each entry (TensorFlow's
    `tape.gradient(y, x, output_gradients=upstream)`).
    """
    weights = None if upstream is None else ops.convert_to_tensor(upstream)

    def objective(inputs):
        y = fn(inputs)
        return (y if weights is None else y * ops.cast(weights, y.dtype)), None

    return to_numpy(_autodiff.value_and_input_gradient(objective, x)[2])


def gradients(fn, *inputs, upstream=None):
    """Gradients of `sum(fn(*inputs) * upstream)` with respect to every input, as numpy arrays.

    The inputs (arrays of one dtype) are packed into one flat vector, so a single input gradient
    gives them all.
    """
    inputs = [np.asarray(a) for a in inputs]
    ends = [int(end) for end in np.cumsum([a.size for a in inputs])]
    spans = list(zip([0] + ends[:-1], ends, [a.shape for a in inputs]))

    def unpacked(flat):
        return fn(*(ops.reshape(flat[start:end], shape) for start, end, shape in spans))

    flat = input_gradient(unpacked, np.concatenate([a.ravel() for a in inputs]), upstream)
    return [flat[start:end].reshape(shape) for start, end, shape in spans]


def batch_jacobian(fn, x):
    """Per-sample Jacobians (N, out, in) of `fn` at the points `x`, from one batched input gradient.

    Each point is repeated once per output entry and each copy's gradient of its own output entry
    is one Jacobian row, so `fn` must treat the samples of a batch independently (as layers and
    models in inference mode do). The dtype is that of the gradient.
    """
    x = np.asarray(x)
    n = x.shape[0]
    out_dim = int(np.prod(fn(x[:1]).shape[1:]))
    select = np.tile(np.eye(out_dim, dtype=x.dtype), (n, 1))

    def flat_outputs(inputs):
        return ops.reshape(fn(inputs), (n * out_dim, out_dim))

    gradient = input_gradient(flat_outputs, np.repeat(x, out_dim, axis=0), select)
    return gradient.reshape(n, out_dim, -1)


def variable_gradients(fn, variables):
    """Gradients of the scalar `fn()` with respect to Keras `variables`, as numpy arrays."""
    return [to_numpy(g) for g in parameter_gradients(lambda: (fn(), None), variables)[2]]


def parameter_gradients(fn, variables):
    """`(loss, aux, gradients)` of `fn() -> (loss, aux)` with respect to Keras `variables` (backend tensors)."""
    return _autodiff.parameter_gradients(fn, variables)


def compiled(fn, variables=()):
    """`fn` compiled as the backend compiles it (tf.function, jax.jit reading `variables` live, eager torch)."""
    return _autodiff.graph_function(fn, variables)


def recorded_calls(monkeypatch, module, name, record):
    """Wrap `module.name` so that each call appends `record(*args, **kwargs)` to the returned list.

    A test asserting on the list fails if the path it exercises silently stops being taken.
    """
    calls, original = [], getattr(module, name)

    def recording(*args, **kwargs):
        calls.append(record(*args, **kwargs))
        return original(*args, **kwargs)

    monkeypatch.setattr(module, name, recording)
    return calls


def float_eps(values):
    """Machine epsilon of `values`' float dtype, and 0 for float64.

    Tests written for float64 (rounding negligible next to their tolerance) keep that tolerance
    where float64 is computed and add `float_eps(result) * error_amplification` where it is not:
    on JAX without x64, a `dtype="float64"` layer computes in float32.
    """
    dtype = np.asarray(values).dtype
    return 0.0 if dtype == np.float64 else float(np.finfo(dtype).eps)


def gradient_of_weighted_gradient(fn, x, upstream):
    """d/dx of sum(x * g(x)^2) with g(x) the gradient of sum(fn(x) * upstream): double backprop, as
    tulip's penalty differentiates an input gradient again (the x weight makes a piecewise-linear
    `fn` give a nonzero result too)."""
    weights = ops.convert_to_tensor(upstream)

    def weighted_square_of_gradient(inputs):
        def objective(z):
            y = fn(z)
            return y * ops.cast(weights, y.dtype), None

        gradient = _autodiff.value_and_input_gradient(objective, inputs, differentiable=True)[2]
        return ops.sum(inputs * ops.square(gradient)), None

    return to_numpy(_autodiff.value_and_input_gradient(weighted_square_of_gradient, x)[2])


def assert_same_export(model, plain, x, tmp_path, bound_rel):
    """`plain` (an export of `model`) computes `model`'s values at `x`, has its bound (to `bound_rel`), and its
    `.keras` file under `tmp_path` loads back to the same values."""
    np.testing.assert_allclose(to_numpy(plain(x)), to_numpy(model(x)), atol=1e-5)
    assert abs(model_lipschitz_bound(plain) - model_lipschitz_bound(model)) <= bound_rel * model_lipschitz_bound(model)
    path = tmp_path / "plain.keras"
    plain.save(path)
    np.testing.assert_allclose(to_numpy(keras.saving.load_model(path)(x)), to_numpy(plain(x)), atol=1e-6)


def chained_model(inputs, layers, functional):
    """`layers` called in a row on `inputs`, as a Sequential or as a functional Model (the export rewrites serve
    both)."""
    if not functional:
        return Sequential([inputs, *layers])
    outputs = inputs
    for layer in layers:
        outputs = layer(outputs)
    return Model(inputs, outputs)


def assert_serves_as_tf_saved_model(model, plain, x, tmp_path):
    """`plain` (an export of `model`), written as a TensorFlow SavedModel under `tmp_path` and loaded back with
    TensorFlow alone, serves `model`'s values at `x` (skips on the other backends)."""
    tf = pytest.importorskip("tensorflow")
    if BACKEND != "tensorflow":
        pytest.skip("a TensorFlow SavedModel is written from the TensorFlow backend")
    plain.export(str(tmp_path / "saved"), format="tf_saved_model", verbose=False)
    loaded = tf.saved_model.load(str(tmp_path / "saved"))
    np.testing.assert_allclose(np.asarray(loaded.serve(x)), to_numpy(model(x)), atol=1e-5)
