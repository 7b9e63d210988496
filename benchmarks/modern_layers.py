"""W2 (shared/bench/WORKLOADS.md) with each modern 1-Lipschitz convolution vs plain Keras, in ONE process.

Plain counterparts (what each Lipschitz model's speed is judged against):

* `plain`: W2 of WORKLOADS.md (Conv2D 3x3 + ReLU, max pooling, Dense): the counterpart of AOL and AOC, which
  replace each conv by ONE convolution (AOL exports to a rescaled stock Conv2D, AOC to a stock Conv2D).
* `plain_residual`: the architecture-equivalent plain network of SLL and CPL. An SLL/CPL layer is a residual
  x - P^T (s relu(P x + b)): TWO 3x3 convolutions per layer, plus a 1x1 convolution where W2 changes the channel
  count (the residual keeps it). `plain_residual` is the same network with stock layers and free weights:
  [Conv2D 1x1 when the channels change], then x - Conv2D(ReLU(Conv2D(x))), same channels, ReLU/max pooling/Dense
  elsewhere. It does ~3x the convolution FLOPs of `plain`, so SLL/CPL are reported against BOTH; their targets
  are judged against `plain_residual` (the same stock operations, i.e. the cost of the architecture itself).
* `plain_lip_ops`: `plain` with the Lipschitz models' GroupSort2 and ScaledL2NormPooling2D in place of ReLU and
  max pooling (explanatory: the exported AOL/AOC model is exactly this graph, so the export ratio of AOL/AOC vs
  `plain` minus this one's is the cost of those two layers, not of the convolution).

Timings: every model is built and warmed up first, then the timed calls are alternated (plain, plain_residual,
..., AOL, AOC, SLL, CPL, plain, ...) so that a loaded machine slows all variants alike. Figures: `train_step`
(`train_on_batch`) and `infer_export` (`predict_on_batch` of `model.vanilla_export()`; plain variants: the plain
model), ms per batch of 256, median over `--repeats`; `*_ratio`: median over the rounds of the ratio to `plain`
in the same round (a shared machine's load drifts between rounds), `*_ratio_equivalent`: the same to the
variant's counterpart above (`COUNTERPART`). `*_cpu`: the same calls in CPU time of this process (all
threads; less sensitive than wall time to other processes on a shared machine). Peak memory: `ru_maxrss` of a
fresh subprocess per variant that builds the model and runs 2 train steps (RSS cannot be attributed to one model
inside a shared process), started before the parent grows (a child inherits its parent's ru_maxrss at fork).

    PYTHONPATH=. TF_CPP_MIN_LOG_LEVEL=3 python benchmarks/modern_layers.py --repeats 5

To add a convolution family, append one entry to `CONVS`: name -> function(filters, in_channels) returning
the Keras layers that replace "SConv filters + GS2" of W2, and its counterpart to `COUNTERPART`.
"""

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from train_step import BATCH_SIZE, LEARNING_RATE, WORKLOADS, _layer_factories, fixed_batch  # noqa: E402

WORKLOAD = "W2"


def _aol(filters, in_channels):
    from deel_lip_ext import layers as lip

    return [lip.AOLConv2D(filters, 3), lip.GroupSort2()]


def _residual(cls_name):
    def make(filters, in_channels):
        from deel_lip_ext import layers as lip

        # A residual layer keeps the channel count: a 1x1 AOL conv changes it first when needed. The residual
        # block is its own nonlinearity (no GroupSort2).
        change = [lip.AOLConv2D(filters, 1)] if filters != in_channels else []
        return change + [getattr(lip, cls_name)(filters, 3)]

    return make


def _aoc(filters, in_channels):
    from deel_lip_ext import layers as lip

    # "same" zero padding like W2's convolutions (k-Lipschitz; circular would make it exactly orthogonal).
    return [lip.AOCConv2D(filters, 3, padding="same"), lip.GroupSort2()]


# name -> function(filters, in_channels) -> layers replacing "SConv filters + GS2" of W2.
CONVS = {
    "AOL": _aol,
    "AOC": _aoc,
    "SLL": _residual("SLLConv2D"),
    "CPL": _residual("CPLConv2D"),
}


def _plain_conv(filters, in_channels):
    import keras

    return [keras.layers.Conv2D(filters, 3, padding="same"), keras.layers.ReLU()]


def _plain_residual(filters, in_channels):
    import keras

    change = [keras.layers.Conv2D(filters, 1)] if filters != in_channels else []
    into = keras.layers.Conv2D(filters, 3, padding="same")
    back = keras.layers.Conv2D(filters, 3, padding="same", use_bias=False)  # SLL/CPL's P^T has no bias

    def block(x):
        return keras.layers.Subtract()([x, back(keras.layers.ReLU()(into(x)))])

    return change + [block]


def _plain_lip_ops_conv(filters, in_channels):
    import keras
    from deel_lip_ext import layers as lip

    return [keras.layers.Conv2D(filters, 3, padding="same"), lip.GroupSort2()]


# Timed figures: wall-clock ms and this process's CPU ms (all threads) of the same calls.
FIGURES = ("train_step", "train_step_cpu", "infer_export", "infer_export_cpu")
# plain variant -> function(filters, in_channels) -> stages (layers or tensor -> tensor callables).
PLAIN = {"plain": _plain_conv, "plain_residual": _plain_residual, "plain_lip_ops": _plain_lip_ops_conv}
# Lipschitz variant -> its architecture-equivalent plain variant (see the module docstring).
COUNTERPART = {"AOL": "plain", "AOC": "plain", "SLL": "plain_residual", "CPL": "plain_residual"}


def _stages(variant):
    """The W2 stages of `variant`: each conv + its activation replaced by the variant's conv family."""

    spec = WORKLOADS[WORKLOAD]
    if variant in CONVS:
        factories, conv = _layer_factories("lip", "SpectralConv2D", "same"), CONVS[variant]
    else:
        factories, conv = _layer_factories("plain", None, "same"), PLAIN[variant]
    if variant == "plain_lip_ops":
        from deel_lip_ext import layers as lip

        factories["act"] = lambda: [lip.GroupSort2()]
        factories["pool"] = lambda: [lip.ScaledL2NormPooling2D(pool_size=(2, 2))]
    stages, channels, kinds = [], spec["input_shape"][-1], spec["layers"]
    for index, (kind, *size) in enumerate(kinds):
        if kind == "conv":
            stages.extend(conv(size[0], channels))
            channels = size[0]
        elif kind == "act" and index > 0 and kinds[index - 1][0] == "conv":
            continue  # part of the conv family's block
        else:
            stages.extend(factories[kind](*size))
    return stages


def build_model(variant):
    """W2 for `variant`: a key of `PLAIN` (functional Keras model) or of `CONVS` (library Sequential)."""
    import keras

    spec = WORKLOADS[WORKLOAD]
    stages = _stages(variant)
    if variant in CONVS:
        from deel_lip_ext.model import Sequential

        return Sequential([keras.Input(spec["input_shape"]), *stages], name=f"W2_{variant}")
    inputs = keras.Input(spec["input_shape"])
    x = inputs
    for stage in stages:
        x = stage(x)
    return keras.Model(inputs, x, name=f"W2_{variant}")


def _compiled(variant):
    import keras

    model = build_model(variant)
    model.compile(keras.optimizers.Adam(LEARNING_RATE), keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    return model


def peak_memory(variant):
    """Peak RSS (MiB) of this process after building `variant` and running 2 train steps."""
    model = _compiled(variant)
    x, y = fixed_batch(WORKLOAD)
    for _ in range(2):
        model.train_on_batch(x, y)
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _peak_memory_subprocess(variant):
    command = [sys.executable, os.path.abspath(__file__), "--memory", variant]
    return float(subprocess.run(command, capture_output=True, text=True, check=True).stdout.strip().splitlines()[-1])


def _paired_ratio(times, reference_times):
    """Median over the rounds of time / reference time of the same round (adjacent calls: robust to load drift)."""
    return statistics.median(t / r for t, r in zip(times, reference_times))


def run(variants, repeats, warmup):
    # First, while this process is still small: Linux children inherit the parent's ru_maxrss at fork.
    memory = {v: _peak_memory_subprocess(v) for v in variants}
    x, y = fixed_batch(WORKLOAD)
    models = {v: _compiled(v) for v in variants}
    for _ in range(warmup):
        for v in variants:
            models[v].train_on_batch(x, y)
    exported = {v: (models[v] if v in PLAIN else models[v].vanilla_export()) for v in variants}
    for _ in range(warmup):
        for v in variants:
            exported[v].predict_on_batch(x)
    times = {v: {key: [] for key in FIGURES} for v in variants}
    for _ in range(repeats):
        for key, call in (("train_step", lambda v: models[v].train_on_batch(x, y)), ("infer_export", None)):
            for v in variants:
                start, start_cpu = time.perf_counter(), time.process_time()
                call(v) if call else exported[v].predict_on_batch(x)
                times[v][f"{key}_cpu"].append(1e3 * (time.process_time() - start_cpu))
                times[v][key].append(1e3 * (time.perf_counter() - start))
    results = {}
    for v in variants:
        results[v] = {key: statistics.median(values) for key, values in times[v].items()}
        results[v]["raw_ms"] = times[v]
        results[v]["peak_rss_mib"] = memory[v]
    for v in variants:
        counterpart = COUNTERPART.get(v, v)
        results[v]["counterpart"] = counterpart
        results[v]["peak_rss_mib_ratio"] = memory[v] / memory["plain"]
        for key in FIGURES:
            results[v][f"{key}_ratio"] = _paired_ratio(times[v][key], times["plain"][key])
            if counterpart in times:
                results[v][f"{key}_ratio_equivalent"] = _paired_ratio(times[v][key], times[counterpart][key])
    return results


def print_table(results, repeats):
    """A markdown table of `results`: ms and ratios to `plain` and to each variant's counterpart."""
    print(f"W2, batch {BATCH_SIZE}, median of {repeats} alternated calls (ms), peak RSS of a fresh process")
    header = "| variant | counterpart |"
    for key in FIGURES:
        header += f" {key} ms | vs plain | vs counterpart |"
    print(header + " peak RSS MiB | vs plain |")
    print("| --- " * (3 + 3 * len(FIGURES)) + "|")
    for v, r in results.items():
        row = f"| {v} | {r['counterpart']} |"
        for key in FIGURES:
            row += f" {r[key]:.1f} | {r[key + '_ratio']:.2f} | {r.get(key + '_ratio_equivalent', float('nan')):.2f} |"
        print(row + f" {r['peak_rss_mib']:.0f} | {r['peak_rss_mib_ratio']:.2f} |")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--variants", nargs="+", default=[*PLAIN, *CONVS])
    parser.add_argument("--out", default="benchmarks/results/modern_layers_W2.json")
    parser.add_argument("--note", default="", help="free text stored in the JSON (e.g. machine load)")
    parser.add_argument("--memory", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.memory:
        print(peak_memory(args.memory))
        return
    variants = ["plain"] + [v for v in args.variants if v != "plain"]
    unknown = [v for v in variants[1:] if v not in CONVS and v not in PLAIN]
    if unknown:
        parser.error(f"unknown variants {unknown}; known: {sorted(PLAIN) + sorted(CONVS)}")
    results = run(variants, args.repeats, args.warmup)
    print_table(results, args.repeats)
    import keras

    meta = {
        "workload": WORKLOAD,
        "batch_size": BATCH_SIZE,
        "repeats": args.repeats,
        "warmup": args.warmup,
        "backend": keras.backend.backend(),
        "keras": keras.__version__,
        "machine": platform.platform(),
        "cpu_count": os.cpu_count(),
        "date_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "note": args.note,
    }
    os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
    with open(args.out, "w") as handle:
        json.dump({"meta": meta, "results": results}, handle, indent=2)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
