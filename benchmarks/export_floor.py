"""How fast an exported Lipschitz model can be: the plain model with its activation as a pass of its own.

A plain network's ReLU costs nothing: oneDNN applies it inside the convolution (Grappler
rewrites Conv2D + BiasAdd + Relu into one fused kernel). GroupSort2 has no such fused form, so
every GroupSort2 of an exported model reads and writes the convolution's output once more. The
fastest any exact export can be is therefore the plain model whose ReLU runs as its own pass:
`max(x, 0)`, which Grappler does not fold into the convolution. This script times, in one
process with their calls alternated (as `train_step.py` does):

* `plain`: the plain model of the workload (`train_step.build_model(..., "plain")`);
* `floor`: the same model and weights, each ReLU replaced by `max(x, 0)` as a layer of its own;
* `export`: `vanilla_export()` of the Lipschitz model, after one training step;
* `export_spatial`: that export with each window-in-channels rewrite undone (`spatial_windows`):
  the one-channel convolution back at stride 1 and its pooling reading spatial windows, as
  exports were before `deel_lip_ext.layers.fused.windows_as_channels`;
* `export_functional`: `vanilla_export()` of the same Lipschitz model rebuilt with the functional
  API (`functional_twin`: new layers, same weights), whose export takes the same rewrites on its
  chains of layers.

Usage:
    PYTHONPATH=. TF_CPP_MIN_LOG_LEVEL=3 python benchmarks/export_floor.py --workloads W1 W2 --rounds 8 --json f.json
"""

from __future__ import annotations

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import train_step  # noqa: E402  (the workloads and the alternated timing live there)


def unfused_activation_model(plain_model):
    """`plain_model` with every ReLU layer replaced by `max(x, 0)` in a layer of its own (same weights)."""
    import keras
    from keras import ops

    class SeparateReLU(keras.layers.Layer):
        """max(x, 0): the ReLU's values, as an elementwise op that is not folded into the convolution."""

        def call(self, inputs):
            return ops.maximum(inputs, ops.zeros((), inputs.dtype))

    layers = [SeparateReLU() if isinstance(layer, keras.layers.ReLU) else layer for layer in plain_model.layers]
    return keras.Sequential([keras.Input(plain_model.input_shape[1:])] + layers, name=f"{plain_model.name}_floor")


def spatial_windows(exported):
    """`exported` (a Sequential) with every strided `Conv2D` + `window_layout="channels"` pooling written back
    as the stride-1 convolution + spatial pooling it came from (its kernel is the wide kernel's first block)."""
    import keras

    from deel_lip_ext.layers import GroupSort2L2NormPooling2D

    layers = list(exported.layers)
    for index in range(1, len(layers)):
        conv, pooling = layers[index - 1], layers[index]
        if not (isinstance(pooling, GroupSort2L2NormPooling2D) and pooling.window_layout == "channels"):
            continue
        (ph, pw), (wide, *bias) = pooling.pool_size, conv.get_weights()
        kernel_size, filters = (wide.shape[0] - ph + 1, wide.shape[1] - pw + 1), wide.shape[-1] // (ph * pw)
        config = {**conv.get_config(), "filters": filters, "kernel_size": kernel_size, "strides": (1, 1)}
        conv = keras.layers.Conv2D.from_config(config)
        conv.build((None, None, None, wide.shape[2]))
        conv.set_weights([wide[: kernel_size[0], : kernel_size[1], :, :filters]] + [b[:filters] for b in bias])
        layers[index - 1] = conv
        layers[index] = GroupSort2L2NormPooling2D.from_config({**pooling.get_config(), "window_layout": "spatial"})
    return keras.Sequential([keras.Input(exported.input_shape[1:])] + layers, name=f"{exported.name}_spatial")


def unfolded_sorts(exported):
    """`exported` (a Sequential) with every `ConvGroupSort2Conv2D` written back as the layers it computes (two
    `Conv2D`, the GroupSort2 between them and its pooling, in place of it and the three `Identity` before it),
    and every `DenseGroupSort2Dense` as its two `Dense` and the GroupSort2 between them, as exports were before
    `deel_lip_ext.layers.sort_fold.folded_sorts_between_convs` and
    `deel_lip_ext.layers.dense_sort_fold.folded_sorts_between_denses`."""
    import keras

    from deel_lip_ext.layers import ConvGroupSort2Conv2D, DenseGroupSort2Dense

    layers = []
    for layer in exported.layers:
        if isinstance(layer, DenseGroupSort2Dense):
            layers[-2:] = _layers_in_a_row(layer)  # in place of the placeholders of the first Dense and the sort
        elif isinstance(layer, ConvGroupSort2Conv2D):
            pooling = [] if layer.pooling is None else [type(layer.pooling).from_config(layer.pooling.get_config())]
            layers[-3:] = _layers_in_a_row(layer) + pooling  # in place of the placeholders of both convs and the sort
        else:
            layers.append(layer)
    return keras.Sequential([keras.Input(exported.input_shape[1:])] + layers, name=f"{exported.name}_unfolded")


def _layers_in_a_row(folded):
    """New copies of a fold's two stock layers (`first`, `second`, same weights) and the GroupSort2 between them."""
    from deel_lip_ext.layers import GroupSort2

    copies = []
    for original in (folded.first, folded.second):
        copy = type(original).from_config(original.get_config())
        kernel_shape = tuple(original.kernel.shape)  # (..., input channels, output channels) for Dense and Conv2D
        copy.build((None,) * (len(kernel_shape) - 1) + kernel_shape[-2:-1])
        copy.set_weights(original.get_weights())
        copies.append(copy)
    return [copies[0], GroupSort2(k_coef_lip=folded.sort_k_coef_lip), copies[1]]


def functional_twin(sequential):
    """`sequential` (a deel_lip_ext Sequential) as a functional `deel_lip_ext.model.Model`: new layers, same weights."""
    import keras

    from deel_lip_ext.model import Model

    inputs = keras.Input(sequential.input_shape[1:])
    outputs = inputs
    for layer in sequential.layers:
        outputs = type(layer).from_config(layer.get_config())(outputs)
    twin = Model(inputs, outputs, name=f"{sequential.name}_functional")
    twin.set_weights(sequential.get_weights())
    return twin


def workload_models(workload):
    """The fixed batch `x` of `workload` and its models {variant: Keras model}, checked to compute the same values.

    `plain`, `floor` (plain, each ReLU a pass of its own), `export` (`vanilla_export()` of the Lipschitz
    model after one training step), `export_spatial` and `export_functional` (see the module docstring).
    """
    import numpy as np

    x, y = train_step.fixed_batch(workload)
    plain = train_step._compiled_model(workload, "plain", "SpectralConv2D", "same", "auto")
    lip = train_step._compiled_model(workload, "lip", "SpectralConv2D", "same", "auto")
    lip.train_on_batch(x, y)
    exported = lip.vanilla_export()
    models = {
        "plain": plain,
        "floor": unfused_activation_model(plain),
        "export": exported,
        "export_spatial": spatial_windows(exported),
        "export_unfolded": unfolded_sorts(exported),
        "export_functional": functional_twin(lip).vanilla_export(),
    }
    same = np.abs(models["plain"].predict_on_batch(x) - models["floor"].predict_on_batch(x)).max()
    if same > 0:
        raise AssertionError(f"the floor model must compute the plain model's values, max difference {same}")
    for variant in ("export_spatial", "export_unfolded", "export_functional"):
        gap = np.abs(models["export"].predict_on_batch(x) - models[variant].predict_on_batch(x)).max()
        if gap > 1e-5:
            raise AssertionError(f"{variant} must compute the export's values, max difference {gap}")
    return x, models


def measure(workload, steps, warmup, rounds=1):
    """{variant: ms of `predict_on_batch`} and the ratios to `plain` for one workload, over `rounds` rounds.

    Each round times `steps` alternated calls of every variant (medians); the figures are the medians
    over the rounds of each round's time and ratio to `plain`, with the range of the ratios (on a
    shared 2-core machine one round's ratio moves by a few hundredths; more rounds narrow the median).
    """
    import statistics

    x, models = workload_models(workload)
    calls = {name: (lambda m=model: m.predict_on_batch(x)) for name, model in models.items()}
    per_round = [train_step._alternated_median_ms(calls, steps, warmup)[0] for _ in range(rounds)]
    ratios = {name: [timings[name] / timings["plain"] for timings in per_round] for name in models}
    return {
        "workload": workload,
        "steps": steps,
        "rounds": rounds,
        "infer_ms": {name: statistics.median(timings[name] for timings in per_round) for name in models},
        "ratio_to_plain": {name: statistics.median(values) for name, values in ratios.items()},
        "ratio_range": {name: [min(values), max(values)] for name, values in ratios.items()},
    }


def markdown_table(rows):
    """One line per workload and variant: its time and its ratio to plain (median and range over the rounds)."""
    lines = ["| workload | variant | ms per batch | / plain | range |", "| --- | --- | --- | --- | --- |"]
    for row in rows:
        for variant, ms in row["infer_ms"].items():
            low, high = row["ratio_range"][variant]
            ratio = row["ratio_to_plain"][variant]
            lines.append(f"| {row['workload']} | {variant} | {ms:.2f} | {ratio:.3f}x | {low:.3f}-{high:.3f}x |")
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workloads", nargs="+", default=["W1", "W2"], choices=["W1", "W2"])
    parser.add_argument("--steps", type=int, default=30, help="timed calls per variant (alternated)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed calls per variant first")
    parser.add_argument("--rounds", type=int, default=1, help="rounds of alternated calls (medians over them)")
    parser.add_argument("--json", help="write the rows and the machine description to this file")
    args = parser.parse_args(argv)
    rows = []
    for workload in args.workloads:
        variants = "plain, floor, export, export_spatial, export_unfolded and export_functional"
        print(f"{workload}: timing {variants} ({args.rounds} x {args.steps} alternated calls each)...", flush=True)
        rows.append(measure(workload, args.steps, args.warmup, args.rounds))
    print(markdown_table(rows))
    if args.json:
        with open(args.json, "w") as file:
            described = {"machine": train_step.machine_description(), **train_step._versions()}
            json.dump({**described, "rows": rows}, file, indent=2)


if __name__ == "__main__":
    main()
