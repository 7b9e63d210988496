"""Random grid over the 1-D convolutions (SpectralConv1D, stock Conv1D incl. causal): bound vs exact norms."""

import sys

import harness  # noqa: F401
import keras
import numpy as np

from deel_lip_ext import layers as lip
from harness import affine_matrix, bound_or_refusal, l2_norm, linf_norm, model_fn

N = int(sys.argv[1]) if len(sys.argv) > 1 else 40
rng = np.random.default_rng(int(sys.argv[2]) if len(sys.argv) > 2 else 0)
bad = 0
for trial in range(N):
    stock = rng.random() < 0.5
    length, cin, cout = int(rng.integers(1, 9)), int(rng.integers(1, 4)), int(rng.integers(1, 4))
    k, s = int(rng.integers(1, 6)), int(rng.choice([1, 1, 2, 3]))
    padding = str(rng.choice(["same", "valid", "causal"] if stock else ["same", "valid"]))
    free = rng.random() < 0.3
    init = keras.initializers.RandomNormal(0.0, float(rng.uniform(0.3, 2.0)), seed=trial)
    if stock:
        layer = keras.layers.Conv1D(cout, k, strides=s, padding=padding, kernel_initializer=init)
    else:
        layer = lip.SpectralConv1D(
            cout, k, strides=s, padding=padding, kernel_initializer=init, k_coef_lip=float(rng.choice([0.5, 1.0, 3.0]))
        )
    tag = f"{type(layer).__name__} k={k} s={s} {padding} L={length} {cin}->{cout} free={free}"
    try:
        model = keras.Sequential([keras.Input((None if free else length, cin)), layer])
        out_shape = model.compute_output_shape((1, length, cin))
        if out_shape[1] is not None and out_shape[1] <= 0:
            continue
        matrix = affine_matrix(model_fn(model), (length, cin))
    except ValueError:
        continue
    for norm, exact in (("l2", l2_norm(matrix)), ("linf", linf_norm(matrix))):
        bound, refusal = bound_or_refusal(model, norm)
        if bound is not None and exact > bound * (1 + 1e-5) + 1e-7:
            bad += 1
            print(f"VIOLATION {norm} {tag}: bound {bound:.6g} exact {exact:.6g}")
    keras.backend.clear_session(free_memory=False)
print("violations", bad)
