"""Backend-neutral gradients, Jacobians and rounding slack for the tests (TensorFlow, JAX, torch).

The tests never call a backend's autodiff themselves: they go through the library's `_autodiff`
(itself tested against analytic gradients in test_autodiff.py) and get numpy arrays back.
"""

import keras
import numpy as np
from keras import ops

from deel_lip_ext import _autodiff

BACKEND = keras.backend.backend()


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
    sizes = [a.size for a in inputs]
    bounds = [int(b) for b in np.cumsum([0] + sizes)]

    def unpacked(flat):
        return fn(*(ops.reshape(flat[a:b], shape) for a, b, shape in zip(bounds[:-1], bounds[1:], [i.shape for i in inputs])))

    flat = input_gradient(unpacked, np.concatenate([a.ravel() for a in inputs]), upstream)
    return [flat[a:b].reshape(i.shape) for a, b, i in zip(bounds[:-1], bounds[1:], inputs)]


def variable_gradients(fn, variables):
    """Gradients of the scalar `fn()` with respect to Keras `variables`, as numpy arrays."""
    return [to_numpy(g) for g in _autodiff.parameter_gradients(lambda: (fn(), None), variables)[2]]


def compiled(fn, variables=()):
    """`fn` compiled as the backend compiles it (tf.function, jax.jit reading `variables` live, eager torch)."""
    return _autodiff.graph_function(fn, variables)


def rounding_slack(values, magnitude=1.0):
    """0 for float64 results; else a rounding allowance `64 eps magnitude` for `values`' float dtype.

    Tests written for float64 (exact up to ~1e-13) keep their tolerance when float64 is computed;
    on JAX without x64 a `dtype="float64"` layer computes in float32, whose rounding this adds.
    `magnitude` is the error amplification of the checked quantity (e.g. |x| / |x - y| for a
    ratio of differences).
    """
    dtype = np.asarray(values).dtype
    if dtype == np.float64:
        return 0.0
    return 64.0 * float(np.finfo(dtype).eps) * magnitude
