"""Compile a keras.ops function with XLA on the TensorFlow backend (and leave it as is elsewhere)."""

import functools

import keras

from deel_lip_ext._optional import tensorflow


def compiled_by_xla(function, vjp=None):
    """`function` as one XLA computation on the TensorFlow backend; unchanged on JAX and torch.

    The math stays in keras.ops: JAX compiles it with the rest of the step,
    torch runs it as is. TensorFlow without XLA runs each op as its own pass
    over memory, which is what the callers avoid. Positional arguments that
    are Python values (ints, floats, None, tuples of them) are compile-time
    constants; each new value or tensor shape costs one compilation.

    Args:
        function: `(inputs, *static) -> outputs`, keras.ops only.
        vjp: optional `(upstream, inputs, *static) -> gradient of sum(upstream * outputs) w.r.t. inputs`,
            keras.ops only, a function of the inputs alone (so that TensorFlow differentiates it
            again, for second-order gradients). On TensorFlow it is compiled too and replaces the
            gradient TensorFlow would derive from the compiled forward, which stores the
            intermediates of the forward pass and reads them back (about 1.5-2x slower for a
            pairwise sort). Only `inputs` (the first argument) then receives a gradient.

    Examples:
        >>> double = compiled_by_xla(lambda x, factor: x * factor, vjp=lambda g, x, factor: g * factor)
    """
    if keras.backend.backend() != "tensorflow":
        return function
    tf = tensorflow("compiled_by_xla")  # only for its compiler
    forward = _compiled_per_signature(tf, function)
    if vjp is None:
        return forward
    backward = _compiled_per_signature(tf, vjp)

    @functools.wraps(function)
    def run(inputs, *static):
        @tf.custom_gradient
        def differentiable(x):
            return forward(x, *static), lambda upstream: backward(upstream, x, *static)

        return differentiable(inputs)

    return run


def _compiled_per_signature(tf, function):
    # One tf.function per signature, each traced once: the compilations are the same as one function's
    # traces, but TensorFlow does not warn about "retracing" for what is a new static configuration.
    compiled = {}

    def run(*args):
        key = tuple(_signature(value) for value in args)
        if key not in compiled:
            # A new Python callable per signature: TensorFlow counts traces per wrapped callable.
            compiled[key] = tf.function(functools.partial(function), jit_compile=True, autograph=False)
        return compiled[key](*args)

    return run


def _signature(value):
    """What a traced function specializes on: a tensor's shape and dtype, a Python value itself."""
    if hasattr(value, "shape") and hasattr(value, "dtype"):
        return ("tensor", tuple(value.shape), str(value.dtype))
    return ("value", value)
