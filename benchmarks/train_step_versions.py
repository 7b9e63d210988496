"""A workload's training step with the parametrization of another commit and of the working tree, alternated with plain.

`parametrization.py` times each kernel's RKO alone; this script times what a user sees: the
training step of a workload of `train_step.py` (W1 by default, `--workload W2`) built three times in
one process (plain Keras, the Lipschitz model with the working tree's parametrization modules, the
same model with the modules of `--base`, read with `git show`, and `SpectralDense`'s training path
and the `Sequential`'s batch chunking of that commit), their calls alternated, the first to go
rotating each round. Each line gives the medians and the median over rounds of the per-round
difference between the two Lipschitz models, with a 95% bootstrap interval: both see the load of
the same moment, so a difference of a few percent shows where the medians drift with the machine.
With `--trained-epochs E` both W1 Lipschitz models start from the weights of a W1 model trained E
epochs on 30,000 MNIST images (Adam 1e-3, batch 128): a trained kernel needs more Björck iterations
than one near its orthogonal initialization (W1's dense kernel: 3 at initialization, 7 after three
epochs).

Usage:
    PYTHONPATH=. TF_CPP_MIN_LOG_LEVEL=3 python benchmarks/train_step_versions.py --base 1201a83 --trained-epochs 3
    PYTHONPATH=. TF_CPP_MIN_LOG_LEVEL=3 python benchmarks/train_step_versions.py --base 2132e56 --workload W2 --steps 30
"""

from __future__ import annotations

import argparse
import contextlib
import inspect
import os
import subprocess
import sys
import tempfile
import time

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


def _as_at(base, base_module):
    """{(owner, attribute): value}: what the Lipschitz layers must call to train as at the base commit.

    The layers call the RKO through `deel_lip_ext.layers.base`; `SpectralDense` multiplies a batch by
    the RKO's two factors in training since the RKO takes `as_factors`, and by the kernel before; the
    `Sequential` runs a memory-bound convolution + sort + pooling over parts of the batch since
    `deel_lip_ext/layers/batch_chunks.py` exists, and over the whole batch before.
    """
    import deel_lip_ext.layers.base as layer_base
    import deel_lip_ext.model as model_module
    from deel_lip_ext.layers import SpectralDense

    rko = base_module.reshaped_kernel_orthogonalization
    patches = {(layer_base, "reshaped_kernel_orthogonalization"): rko}
    if "as_factors" not in inspect.signature(rko).parameters:
        patches[(layer_base, "reshaped_kernel_orthogonalization")] = lambda *args, as_factors=False: rko(*args)
        patches[(SpectralDense, "_multiplies_factors")] = lambda layer, inputs: False
    chunking = subprocess.run(["git", "cat-file", "-e", f"{base}:deel_lip_ext/layers/batch_chunks.py"], check=False)
    if chunking.returncode != 0:
        patches[(model_module, "batch_chunks")] = lambda layer, inputs: 1
    return patches


@contextlib.contextmanager
def _patched(patches):
    """Within the block, `owner.attribute` is `value` for each `(owner, attribute): value` of `patches`."""
    now = {key: getattr(*key) for key in patches}
    for (owner, attribute), value in patches.items():
        setattr(owner, attribute, value)
    try:
        yield
    finally:
        for (owner, attribute), value in now.items():
            setattr(owner, attribute, value)


def _calling_as_at(patches, function):
    """`function` with `patches` in place at every call: TensorFlow and JAX trace it so at its first call, torch
    (eager) runs it so at each."""

    def run():
        with _patched(patches):
            return function()

    return run


def _paired_rounds(functions, steps, warmup):
    """{name: array of ms}: `steps` rounds calling every function once, the first to go rotating each round."""
    for _ in range(warmup):
        for function in functions.values():
            function()
    order, times = list(functions), {name: [] for name in functions}
    for _ in range(steps):
        order = order[1:] + order[:1]
        for name in order:
            start = time.perf_counter()
            functions[name]()
            times[name].append(1000.0 * (time.perf_counter() - start))
    return {name: np.asarray(values) for name, values in times.items()}


def paired_difference(times, name, reference, seed=0):
    """Median over rounds of `times[name] - times[reference]` (ms) and its 95% bootstrap interval.

    The rounds pair the calls: both variants see the load of the same moment, so differences of a few
    percent show where the medians of each variant drift with the machine.
    """
    differences = times[name] - times[reference]
    rng = np.random.default_rng(seed)
    medians = [np.median(rng.choice(differences, differences.size)) for _ in range(2000)]
    return float(np.median(differences)), tuple(float(q) for q in np.percentile(medians, [2.5, 97.5]))


def measure(base, workload, steps, warmup, weights):
    """{name: array of ms per round} for the workload's step: plain, the working tree, `base`'s parametrization."""
    from parametrization import base_orthogonal_module
    from train_step import _compiled_model, fixed_batch

    x, y = fixed_batch(workload)
    models = {name: _compiled_model(workload, name.split("_")[0], "SpectralConv2D", "same", "auto") for name in NAMES}
    if weights:
        for name in ("lip", "lip_base"):
            models[name].load_weights(weights)
    with tempfile.TemporaryDirectory() as directory:
        patches = _as_at(base, base_orthogonal_module(base, directory))
    steps_of = {name: (lambda m=model: m.train_on_batch(x, y)) for name, model in models.items()}
    steps_of["lip_base"] = _calling_as_at(patches, steps_of["lip_base"])
    losses = {name: float(step()) for name, step in steps_of.items()}
    assert np.isfinite(list(losses.values())).all(), losses
    return _paired_rounds(steps_of, steps, warmup)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", required=True, help="commit whose parametrization modules are the baseline")
    parser.add_argument("--workload", choices=("W1", "W2"), default="W1", help="workload of train_step.py")
    parser.add_argument("--trained-epochs", type=int, default=0, help="train W1 this many epochs first (0: none)")
    parser.add_argument("--steps", type=int, default=60, help="timed rounds (each calls the three models)")
    parser.add_argument("--warmup", type=int, default=5, help="untimed rounds first")
    parser.add_argument("--repeats", type=int, default=3, help="measurements in a row (each prints its line)")
    args = parser.parse_args(argv)
    if args.trained_epochs and args.workload != "W1":
        parser.error("--trained-epochs trains W1 on MNIST: use it with --workload W1")
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    with tempfile.TemporaryDirectory() as directory:
        weights = os.path.join(directory, "w1.weights.h5") if args.trained_epochs else None
        if weights:
            trained_weights(args.trained_epochs, weights)
        for _ in range(args.repeats):
            times = measure(args.base, args.workload, args.steps, args.warmup, weights)
            medians = {name: float(np.median(values)) for name, values in times.items()}
            ratios = "  ".join(
                f"{name} {medians[name]:.2f} ms ({medians[name] / medians['plain']:.3f}x)" for name in NAMES
            )
            difference, (low, high) = paired_difference(times, "lip", "lip_base")
            print(
                f"{args.workload} training step, {args.trained_epochs} epochs trained: {ratios}; "
                f"lip - lip_base per round {difference:+.2f} ms (95% CI {low:+.2f} to {high:+.2f})",
                flush=True,
            )


if __name__ == "__main__":
    main()
