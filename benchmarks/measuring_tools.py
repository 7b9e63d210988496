"""Time the measuring tools on the W1 workload: `evaluate_lip_const`, and `certify` called twice.

The model is W1's Lipschitz variant (benchmarks/train_step.py: two SpectralConv2D of 16 and 32
channels, SpectralDense 64, 10 logits on 28 x 28 x 1), on random inputs x ~ N(0, 1) (seed 0).

* `evaluate_lip_const` on `--points` points (default 256, with deel-lip's default eps: the
  Jacobians at the points and at the points plus noise), first call (tracing included) and
  second call; the value found is printed next to the certified bound it must not exceed.
* `certify` on `--certify-samples` points, twice, first thing after building the model: the
  first call computes the exact layer spectra and traces the forward, the second reuses both
  (the bound cache of `deel_lip_ext.layers`).

    PYTHONPATH=. TF_CPP_MIN_LOG_LEVEL=3 python benchmarks/measuring_tools.py
    KERAS_BACKEND=jax PYTHONPATH=. python benchmarks/measuring_tools.py --points 64
"""

from __future__ import annotations

import argparse
import time

import keras
import numpy as np
from train_step import WORKLOADS, build_model

from deel_lip_ext.certification import certify
from deel_lip_ext.utils import evaluate_lip_const, model_lipschitz_bound


def timed(function):
    """(seconds, result) of one call."""
    start = time.perf_counter()
    result = function()
    return time.perf_counter() - start, result


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--points", type=int, default=256, help="points of evaluate_lip_const (default 256)")
    parser.add_argument("--certify-samples", type=int, default=2000, help="points certified (default 2000)")
    args = parser.parse_args(argv)
    rng = np.random.default_rng(0)
    shape = WORKLOADS["W1"]["input_shape"]
    model = build_model("W1", "lip")
    x = rng.standard_normal((max(args.points, args.certify_samples),) + shape).astype("float32")
    y = rng.integers(0, 10, len(x))
    model(x[:1])
    print(f"backend={keras.backend.backend()} model=W1 (Lipschitz variant)")

    data = (x[: args.certify_samples], y[: args.certify_samples])
    first, _ = timed(lambda: certify(model, data, [0.1], verbose=False))
    second, _ = timed(lambda: certify(model, data, [0.1], verbose=False))
    print(
        f"certify, {args.certify_samples} points: first call {first:6.2f} s, second call {second:6.2f} s "
        f"({first / second:.1f}x faster)"
    )

    for call in ("first", "second"):
        seconds, estimate = timed(lambda: evaluate_lip_const(model, x[: args.points], seed=0))
        print(f"evaluate_lip_const, {args.points} points, {call} call: {seconds:6.2f} s, estimate {estimate:.6f}")
    bound = float(model_lipschitz_bound(model))
    print(f"certified bound (model_lipschitz_bound) {bound:.6f}: estimate <= bound: {estimate <= bound * (1 + 1e-5)}")


if __name__ == "__main__":
    main()
