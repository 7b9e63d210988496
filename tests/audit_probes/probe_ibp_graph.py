"""IBP certification (certify_ibp / ibp_margins / interval_bounds) walks `model.layers` (recursively) as a chain.

* A subclassed model whose `call` does more than chain its layers (here: negate the logits) is accepted, and
  certify_ibp certifies a class the model does not even predict at the centre of the ball.
* A functional model (its `layers` start with the InputLayer) crashes with a bare TypeError instead of being
  walked or refused clearly.
"""

import harness  # noqa: F401
import keras
import numpy as np
from keras import ops

from deel_lip_ext.linf import certify_ibp, interval_bounds


class NegatedLogits(keras.Model):
    def __init__(self):
        super().__init__()
        self.dense = keras.layers.Dense(2, kernel_initializer="identity", bias_initializer="zeros")

    def call(self, x):
        return ops.negative(self.dense(x))


def subclassed():
    model = NegatedLogits()
    model(np.zeros((1, 2), "float32"))
    return model


def functional():
    x = keras.Input((2,))
    return keras.Model(x, keras.layers.Dense(2, kernel_initializer="identity")(x))


x = np.array([[1.0, 0.0]], "float32")
for name, make in (("subclassed model negating its logits", subclassed), ("functional chain", functional)):
    model = make()
    predicted = int(np.argmax(model(x).numpy()))
    for label in (0, 1):
        try:
            ok = bool(certify_ibp(model, x, np.array([label]), eps=0.1, clip_min=None, clip_max=None)[0])
        except (TypeError, ValueError) as error:
            print(f"refused   {name}: {type(error).__name__}: {str(error)[:120]}")
            break
        lo, hi = (t.numpy()[0] for t in interval_bounds(model, x - 0.1, x + 0.1))
        flag = "VIOLATION" if ok and label != predicted else "ok"
        print(
            f"{flag:9s} {name}: model predicts {predicted} at x, certify_ibp(label={label}) = {ok}; "
            f"interval_bounds {lo}..{hi}, model(x) {model(x).numpy()[0]}"
        )
