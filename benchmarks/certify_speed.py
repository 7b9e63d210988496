"""`certify` against the eager forward loop it replaced, on the active Keras backend.

The model is the zoo's `kw_small` (Wong et al.'s small MNIST network, BCOP convolutions) on
random 28 x 28 x 1 images; both variants take the same `lip_const` (the bound is not timed) and
run alternately in this process. `eager` is the loop `certify` ran before it compiled its
forward: `model(x, training=False)` per batch, then `certified_radius`.

    KERAS_BACKEND=jax PYTHONPATH=. python benchmarks/certify_speed.py --samples 2000 --repeats 3
"""

from __future__ import annotations

import argparse
import time

import keras
import numpy as np

from deel_lip_ext.certification import certified_radius, certify, iterate_batches
from deel_lip_ext.utils import model_lipschitz_bound
from deel_lip_ext.zoo import kw_small


def eager_radii(model, x, y, lip_const, batch_size):
    """The loop of `certify` before its forward was compiled."""
    radii = []
    for xb, yb in iterate_batches((x, y), batch_size):
        logits = keras.ops.convert_to_numpy(model(xb, training=False))
        radii.append(certified_radius(logits, yb, "l2", lip_const))
    return np.concatenate(radii)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=2000)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    x = rng.uniform(size=(args.samples, 28, 28, 1)).astype("float32")
    y = rng.integers(0, 10, args.samples)
    model = kw_small("bcop")
    model(x[:1])
    lip_const = float(model_lipschitz_bound(model))
    times = {"eager": [], "certify": []}
    for _ in range(args.repeats):
        start = time.perf_counter()
        reference = eager_radii(model, x, y, lip_const, args.batch_size)
        times["eager"].append(time.perf_counter() - start)
        start = time.perf_counter()
        result = certify(model, (x, y), [0.1], lip_const=lip_const, batch_size=args.batch_size, verbose=False)
        times["certify"].append(time.perf_counter() - start)
    difference = float(np.max(np.abs(result.radii - reference)))
    print(f"backend={keras.backend.backend()} samples={args.samples} batch_size={args.batch_size}")
    for name, values in times.items():
        print(f"{name:8s} first {values[0]:7.2f} s  median {np.median(values):7.2f} s  all {np.round(values, 2)}")
    print(f"max |radius difference| = {difference:.2e}")


if __name__ == "__main__":
    main()
