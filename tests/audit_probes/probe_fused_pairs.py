"""The graph walk fuses CircularPadding2D + valid Conv2D into one circular convolution (utils._circular_pair);
unlike _padding_pair it does not check the conv's data_format. A channels_first Conv2D after a (channels_last)
CircularPadding2D is bounded as a circular conv of another operator."""

import harness  # noqa: F401
import keras
import numpy as np

from deel_lip_ext import layers as lip
from deel_lip_ext.utils import model_lipschitz_bound
from harness import affine_matrix, l2_norm

rng = np.random.default_rng(0)
for shape in [(4, 4, 3), (3, 3, 6)]:
    inputs = keras.Input(shape)
    padded = lip.CircularPadding2D(1)(inputs)
    conv = keras.layers.Conv2D(2, 3, padding="valid", data_format="channels_first", use_bias=False)
    model = keras.Model(inputs, conv(padded))
    conv.kernel.assign(rng.normal(size=conv.kernel.shape).astype("float32"))
    exact = l2_norm(affine_matrix(lambda z: keras.ops.convert_to_numpy(model(z)), shape))
    try:
        bound = model_lipschitz_bound(model)
    except Exception as error:  # noqa: BLE001
        print(f"refused   {shape}: {type(error).__name__}: {str(error)[:150]}")
        continue
    print(
        f"{'VIOLATION' if exact > bound * (1 + 1e-6) else 'ok':9s} CircularPadding2D + channels_first Conv2D on "
        f"{shape}: bound {bound:.6g} exact {exact:.6g}"
    )
