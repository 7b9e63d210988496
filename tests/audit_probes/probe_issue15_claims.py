"""Issue 15 claims the tests exempt or loosen: is CPLConv2D 1-Lipschitz (measured and certified) after a few Adam
steps (tests/test_sll_cpl.py exempts it), is CPLDense <= 1 + 1e-3 (the test allows 1.05), and is LiResNetBlock
<= k (1 + 1e-3) over kernel 1/3/5, k 0.5/1/5 (tests/test_residual.py checks k in {1, 2}, kernel 3, within 5%)?"""

import sys

import harness  # noqa: F401
import keras
import numpy as np

from deel_lip_ext.layers import CPLConv2D, CPLDense, LiResNetBlock
from harness import affine_matrix, jacobian_lower, l2_norm, pair_search

sys.path.insert(0, "tests")
from test_layers_lipschitz import _train_a_few_steps  # noqa: E402

rng = np.random.default_rng(0)
for channels, filters, kernel, size, padding in [
    (1, 8, 3, 5, "circular"),
    (8, 8, 5, 4, "circular"),
    (16, 64, 3, 4, "same"),
    (3, 16, 3, 5, "same"),
]:
    layer = CPLConv2D(
        filters,
        kernel,
        padding=padding,
        kernel_initializer="glorot_normal",
        bias_initializer=keras.initializers.RandomNormal(0, 0.5),
    )
    model = keras.Sequential([keras.Input((size, size, channels)), layer])
    _train_a_few_steps(model)
    x = rng.normal(size=(6, size, size, channels)).astype("float32")
    measured = max(jacobian_lower(model, x), pair_search(model, x[:3], steps=20))
    print(
        f"CPLConv2D {channels}->{filters} k{kernel} {size}x{size} {padding}: certificate "
        f"{layer.lipschitz_constant():.5f} measured {measured:.5f}",
        flush=True,
    )

for d, units in [(16, 8), (1, 64), (64, 1), (32, 32)]:
    layer = CPLDense(units, kernel_initializer="glorot_normal")
    model = keras.Sequential([keras.Input((d,)), layer])
    _train_a_few_steps(model)
    print(f"CPLDense {d}->{units}: certificate {layer.lipschitz_constant():.5f}", flush=True)

for kernel in (1, 3, 5):
    for k in (0.5, 1.0, 5.0):
        block = LiResNetBlock(
            kernel, padding="same", k_coef_lip=k, kernel_initializer=keras.initializers.RandomNormal(0.0, 0.3, seed=0)
        )
        model = keras.Sequential([keras.Input((6, 6, 3)), block])
        _train_a_few_steps(model)
        exact = l2_norm(affine_matrix(lambda z: keras.ops.convert_to_numpy(model(z)), (6, 6, 3)))
        flag = "OVER" if exact > k * (1 + 1e-3) else "ok"
        print(
            f"{flag:4s} LiResNetBlock kernel {kernel} k {k}: exact {exact:.5f} = k * {exact / k:.5f}, "
            f"certificate {block.lipschitz_constant():.5f}",
            flush=True,
        )
