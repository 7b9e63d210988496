"""W1's training step with the parametrization of another commit and of the working tree, alternated with plain.

`parametrization.py` times each kernel's RKO alone; this script times what a user sees: the
training step of the W1 workload (`train_step.py`) built three times in one process (plain Keras,
the Lipschitz model with the working tree's parametrization modules, the same model with the
modules of `--base`, read with `git show`), their calls alternated. With `--trained-epochs E` both
Lipschitz models start from the weights of a W1 model trained E epochs on 30,000 MNIST images
(Adam 1e-3, batch 128): a trained kernel needs more Björck iterations than one near its
orthogonal initialization (W1's dense kernel: 3 at initialization, 7 after three epochs).

Usage:
    PYTHONPATH=. TF_CPP_MIN_LOG_LEVEL=3 python benchmarks/train_step_versions.py --base 1201a83 --trained-epochs 3
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile

import numpy as np

# The three models, timed in this order: plain Keras, Lipschitz with the working tree, Lipschitz with --base.
NAMES = ("plain", "lip", "lip_base")


def trained_weights(epochs, path):
    """Train W1's Lipschitz model `epochs` epochs on 30,000 MNIST images and save its weights to `path`."""
    import keras

    from deel_lip_ext.datasets import load_numpy
    from train_step import build_model

    images, labels, _, _ = load_numpy("mnist", num_train=30000, num_test=1)
    images = images.reshape(-1, 28, 28, 1).astype("float32")
    model = build_model("W1", "lip")
    model.compile(
        optimizer=keras.optimizers.Adam(1e-3), loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    )
    model.fit(images, labels, batch_size=128, epochs=epochs, verbose=2)
    model.save_weights(path)


def measure(base, steps, warmup, weights):
    """{"plain", "lip", "lip_base"}: median ms of W1's training step, and the final losses."""
    import deel_lip_ext.layers.base as layer_base
    from parametrization import base_orthogonal_module
    from train_step import _alternated_median_ms, _compiled_model, fixed_batch

    x, y = fixed_batch("W1")
    models = {name: _compiled_model("W1", name.split("_")[0], "SpectralConv2D", "same", "auto") for name in NAMES}
    if weights:
        for name in ("lip", "lip_base"):
            models[name].load_weights(weights)
    now = layer_base.reshaped_kernel_orthogonalization
    with tempfile.TemporaryDirectory() as directory:
        # The layers call the RKO through `deel_lip_ext.layers.base`: the base model's step is traced with
        # the base modules' function there, the others with the working tree's.
        layer_base.reshaped_kernel_orthogonalization = base_orthogonal_module(
            base, directory
        ).reshaped_kernel_orthogonalization
        try:
            models["lip_base"].train_on_batch(x, y)
        finally:
            layer_base.reshaped_kernel_orthogonalization = now
    functions = {name: (lambda m=model: float(m.train_on_batch(x, y))) for name, model in models.items()}
    return _alternated_median_ms(functions, steps, warmup)[:2]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", required=True, help="commit whose parametrization modules are the baseline")
    parser.add_argument("--trained-epochs", type=int, default=0, help="train W1 this many epochs first (0: none)")
    parser.add_argument("--steps", type=int, default=60, help="timed rounds (each calls the three models)")
    parser.add_argument("--warmup", type=int, default=5, help="untimed rounds first")
    parser.add_argument("--repeats", type=int, default=3, help="measurements in a row (each prints its line)")
    args = parser.parse_args(argv)
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    with tempfile.TemporaryDirectory() as directory:
        weights = os.path.join(directory, "w1.weights.h5") if args.trained_epochs else None
        if weights:
            trained_weights(args.trained_epochs, weights)
        for _ in range(args.repeats):
            medians, losses = measure(args.base, args.steps, args.warmup, weights)
            ratios = "  ".join(
                f"{name} {medians[name]:.2f} ms ({medians[name] / medians['plain']:.3f}x)" for name in NAMES
            )
            print(f"W1 training step, {args.trained_epochs} epochs trained: {ratios}", flush=True)
            assert np.isfinite([values[-1] for values in losses.values()]).all()


if __name__ == "__main__":
    main()
