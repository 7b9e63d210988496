"""Compile a keras.ops function with XLA on the TensorFlow backend (and leave it as is elsewhere)."""

import functools

import keras

from deel_lip_ext._optional import tensorflow


def compiled_by_xla(function):
    """`function` as one XLA computation on the TensorFlow backend; unchanged on JAX and torch.

    The math stays in keras.ops: JAX compiles it with the rest of the step,
    torch runs it as is. TensorFlow without XLA runs each op as its own pass
    over memory, which is what the callers avoid. Positional arguments that
    are Python values (ints, floats, None, tuples of them) are compile-time
    constants; each new value or tensor shape costs one compilation.
    """
    if keras.backend.backend() != "tensorflow":
        return function
    tf = tensorflow("compiled_by_xla")  # only for its compiler
    # One tf.function per signature, each traced once: the compilations are the same as one function's
    # traces, but TensorFlow does not warn about "retracing" for what is a new static configuration.
    compiled = {}

    @functools.wraps(function)
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
