"""Compile a keras.ops function with XLA on the TensorFlow backend (and leave it as is elsewhere)."""

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
    return tf.function(function, jit_compile=True, reduce_retracing=True, autograph=False)
