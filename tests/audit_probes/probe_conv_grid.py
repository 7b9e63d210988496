"""Random grid over every linear convolution layer: certified bound (model_lipschitz_bound, l2 and linf) vs the
exact operator norm of the layer that runs (impulse responses, float64 SVD / row sums).

Usage: python tests/audit_probes/probe_conv_grid.py [n_per_class] [seed] [class names...]
Prints one line per violation and a summary per class.
"""

import sys

import harness  # noqa: F401  (sets sys.path, env)
import keras
import numpy as np

from deel_lip_ext import layers as lip
from harness import affine_matrix, bound_or_refusal, l2_norm, linf_norm, model_fn

N = int(sys.argv[1]) if len(sys.argv) > 1 else 20
SEED = int(sys.argv[2]) if len(sys.argv) > 2 else 0
ONLY = set(sys.argv[3:])


def init(rng):
    return keras.initializers.RandomNormal(0.0, float(rng.uniform(0.3, 2.0)), seed=int(rng.integers(1 << 30)))


CLASSES = {
    "SpectralConv2D": (lip.SpectralConv2D, ("same", "valid", "circular"), {}),
    "FrobeniusConv2D": (lip.FrobeniusConv2D, ("same", "valid", "circular"), {}),
    "AOLConv2D": (lip.AOLConv2D, ("same", "valid", "circular"), {}),
    "BCOPConv2D": (lip.BCOPConv2D, ("same", "valid", "circular"), {"noinit": True}),
    "RKOConv2D": (lip.RKOConv2D, ("same", "valid", "circular"), {}),
    "OSSNConv2D": (lip.OSSNConv2D, ("same", "valid", "circular"), {}),
    "SVCMConv2D": (lip.SVCMConv2D, ("same", "valid", "circular"), {}),
    "AOCConv2D": (lip.AOCConv2D, ("same", "valid", "circular"), {"dilation": True}),
    "AOCConv2DTranspose": (lip.AOCConv2DTranspose, ("same", "valid", "circular"), {}),
    "PadConv2D": (lip.PadConv2D, ("same", "valid", "constant", "reflect", "symmetric", "circular"), {}),
    "SpectralConv2DTranspose": (lip.SpectralConv2DTranspose, ("same", "valid"), {}),
    "LiResNetBlock": (lip.LiResNetBlock, ("same", "circular"), {"residual": True}),
    "Conv2D": (keras.layers.Conv2D, ("same", "valid"), {"stock": True}),
    "Conv2DTranspose": (keras.layers.Conv2DTranspose, ("same", "valid"), {"stock": True}),
}


def make(name, rng, size, cin):
    cls, paddings, opts = CLASSES[name]
    padding = str(rng.choice(paddings))
    kernel = int(rng.choice([1, 2, 3, 4, 5]))
    stride = int(rng.choice([1, 1, 2, 3]))
    cout = int(rng.choice([1, 2, 5]))
    kwargs = {"padding": padding, "use_bias": bool(rng.random() < 0.5)}
    if not opts.get("noinit"):
        kwargs["kernel_initializer"] = init(rng)
    if not opts.get("stock"):
        kwargs["k_coef_lip"] = float(rng.choice([0.5, 1.0, 2.5]))
    if opts.get("residual"):
        kwargs.pop("use_bias")
        return cls(kernel_size=kernel, **kwargs), dict(kwargs, kernel=kernel)
    kwargs["strides"] = stride
    if opts.get("dilation") and rng.random() < 0.4:
        kwargs["dilation_rate"] = int(rng.choice([2, 3]))
        kwargs["strides"] = 1
    filters = cin if opts.get("residual") else cout
    return cls(filters, kernel, **kwargs), dict(kwargs, kernel=kernel, cout=filters)


def main():
    rng = np.random.default_rng(SEED)
    violations = 0
    for name in CLASSES:
        if ONLY and name not in ONLY:
            continue
        counts = {"bounded": 0, "refused": 0, "bad": 0, "over_k": 0}
        for trial in range(N):
            size = int(rng.choice([1, 2, 3, 4, 5, 6, 7]))
            width = size if rng.random() < 0.7 else int(rng.choice([2, 3, 5]))
            cin = int(rng.choice([1, 2, 3]))
            free = rng.random() < 0.3  # build with None spatial dims, evaluate at (size, width)
            try:
                layer, conf = make(name, rng, size, cin)
                in_shape = (None, None, cin) if free else (size, width, cin)
                model = keras.Sequential([keras.Input(in_shape), layer])
                fn = model_fn(model)
                expected = model.compute_output_shape((1, size, width, cin))
                if any(d is not None and d <= 0 for d in expected[1:]):
                    counts["empty_output"] = (
                        counts.get("empty_output", 0) + 1
                    )  # TF returns garbage (see probe_valid_small)
                    continue
                matrix = affine_matrix(fn, (size, width, cin))
            except (ValueError, TypeError):
                counts["refused"] += 1
                continue
            except Exception as error:  # noqa: BLE001
                print(
                    f"CRASH     {name} {conf if 'conf' in dir() else ''} size={size}x{width} cin={cin}: "
                    f"{type(error).__name__}: {str(error)[:200]}"
                )
                continue
            exact2, exactinf = l2_norm(matrix), linf_norm(matrix)
            tag = f"{name} {conf} in={size}x{width}x{cin} free={free}"
            for norm, exact in (("l2", exact2), ("linf", exactinf)):
                bound, refusal = bound_or_refusal(model, norm)
                if bound is None:
                    continue
                counts["bounded"] += 1
                if exact > bound * (1 + 1e-5) + 1e-7:
                    counts["bad"] += 1
                    violations += 1
                    print(f"VIOLATION {norm} {tag}: bound={bound:.6g} exact={exact:.6g} ratio={exact / bound:.4f}")
            k = conf.get("k_coef_lip")
            if k is not None and exact2 > k * (1 + 1e-3):
                counts["over_k"] += 1
                print(f"OVER_K    {tag}: exact={exact2:.6g} > k={k}")
            keras.backend.clear_session(free_memory=False)
        print(f"SUMMARY {name}: {counts}", flush=True)
    print("TOTAL violations", violations)


if __name__ == "__main__":
    main()
