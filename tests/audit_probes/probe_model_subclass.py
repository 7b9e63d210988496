"""Models whose class overrides `call` but still carry a functional graph: model_lipschitz_bound (and IBP) walk the
graph (Sequential._functional / the functional nodes) and ignore the overridden call. A realistic case: a Sequential
subclass that normalizes its input, (x - mean) / std, in `call`."""

import harness  # noqa: F401
import keras
import numpy as np

from deel_lip_ext import layers as lip
from deel_lip_ext.linf import certify_ibp, linf_lipschitz_bound
from deel_lip_ext.utils import model_lipschitz_bound
from harness import affine_matrix, l2_norm, linf_norm


class NormalizingSequential(keras.Sequential):
    def call(self, inputs, training=None, mask=None):
        return super().call((inputs - 0.5) / 0.01, training=training, mask=mask)


class NegatingSequential(keras.Sequential):
    def call(self, inputs, training=None, mask=None):
        return -super().call(inputs, training=training, mask=mask)


class FunctionalSubclass(keras.Model):
    def __init__(self):
        inputs = keras.Input((3,))
        super().__init__(inputs, lip.SpectralDense(3)(inputs))

    def call(self, inputs, training=None, mask=None):
        return 100.0 * super().call(inputs, training=training, mask=mask)


models = {
    "Sequential subclass normalizing its input in call": NormalizingSequential(
        [keras.Input((3,)), lip.SpectralDense(3)]
    ),
    "functional keras.Model subclass scaling in call": FunctionalSubclass(),
}
for name, model in models.items():
    fn = lambda z, m=model: keras.ops.convert_to_numpy(m(z))  # noqa: E731
    matrix = affine_matrix(fn, (3,))
    for norm, exact in (("l2", l2_norm(matrix)), ("linf", linf_norm(matrix))):
        try:
            bound = model_lipschitz_bound(model, norm)
        except ValueError as error:
            print(f"refused   {name} {norm}: {str(error)[:120]}")
            continue
        flag = "VIOLATION" if exact > bound * (1 + 1e-5) else "ok"
        print(f"{flag:9s} {name} {norm}: bound {bound:.6g} exact {exact:.6g}")

# IBP: a Sequential subclass that negates the logits: certify_ibp certifies the class it does not predict.
model = NegatingSequential([keras.Input((2,)), keras.layers.Dense(2, kernel_initializer="identity")])
x = np.array([[1.0, 0.0]], "float32")
predicted = int(np.argmax(keras.ops.convert_to_numpy(model(x))))
for label in (0, 1):
    try:
        ok = bool(certify_ibp(model, x, np.array([label]), eps=0.1, clip_min=None, clip_max=None)[0])
    except (TypeError, ValueError, AttributeError) as error:
        print(f"refused   IBP on NegatingSequential: {type(error).__name__}: {str(error)[:100]}")
        break
    flag = "VIOLATION" if ok and label != predicted else "ok"
    print(f"{flag:9s} IBP on NegatingSequential: predicts {predicted}, certify_ibp(label={label}) = {ok}")
print("linf bound of NegatingSequential (negation is 1-Lipschitz, fine):", linf_lipschitz_bound(model))

# IBP on a plain functional chain: does it work at all?
inputs = keras.Input((2,))
functional = keras.Model(inputs, keras.layers.Dense(2, kernel_initializer="identity")(inputs))
try:
    result = certify_ibp(functional, x, np.array([0]), eps=0.1, clip_min=None, clip_max=None)
    print("IBP on a functional chain:", result)
except Exception as error:  # noqa: BLE001
    print(f"CRASH     IBP on a functional chain: {type(error).__name__}: {str(error)[:120]}")
