"""Backend-specific autodiff for gradient-regularized training (TensorFlow only).

`keras.ops` has no gradient operator, so everything that differentiates with respect to
the *input* (adversarial directions, the tulip penalty by double backprop, attacks)
lives here. JAX (`jax.grad` inside the loss) and torch (`autograd.grad(create_graph=True)`)
versions would be added to this module only; until then `require_supported_backend`
turns their use into a clear error instead of a failure deep inside a backend op.
"""

import importlib.util

import keras

from deel_lip_ext._optional import tensorflow

SUPPORTED_BACKENDS = ("tensorflow",)


def require_supported_backend(feature):
    """Raises NotImplementedError naming the active backend when it is not supported."""
    backend = keras.backend.backend()
    if backend not in SUPPORTED_BACKENDS or importlib.util.find_spec("tensorflow") is None:
        raise NotImplementedError(
            f"{feature} needs input gradients (nested autodiff), which deel_lip_ext "
            f"implements for the Keras backend(s) {SUPPORTED_BACKENDS} only; the active "
            f"Keras backend is {backend!r}. Set KERAS_BACKEND=tensorflow."
        )


def value_and_input_gradient(fn, x):
    """Evaluates `values, aux = fn(x)` and the gradient of `sum(values)` w.r.t. `x`.

    With per-sample `values` this gives every sample's own input gradient in one pass
    (samples do not interact unless the model couples them, e.g. train-mode BatchNorm).
    Called under an outer `GradientTape` (as in `parameter_gradients`), the returned
    gradient stays differentiable w.r.t. the parameters: this is the double backprop.
    """
    tf = tensorflow("input gradients")
    x = tf.convert_to_tensor(x)
    with tf.GradientTape() as tape:
        tape.watch(x)
        values, aux = fn(x)
        total = tf.reduce_sum(values)
    gradient = tape.gradient(total, x, unconnected_gradients=tf.UnconnectedGradients.ZERO)
    return values, aux, gradient


def parameter_gradients(fn, variables):
    """Evaluates `loss, aux = fn()` and the gradients of `loss` w.r.t. `variables`."""
    tf = tensorflow("parameter gradients")
    with tf.GradientTape() as tape:
        loss, aux = fn()
    gradients = tape.gradient(loss, variables, unconnected_gradients=tf.UnconnectedGradients.ZERO)
    return loss, aux, gradients


def graph_function(fn):
    """Compiles a measurement function to a graph (eager PGD would be far slower)."""
    return tensorflow("graph_function").function(fn, reduce_retracing=True)
