"""W2 ("cifar-conv", shared/bench/WORKLOADS.md) with the BCOP paper's convolutions in place of SConv.

Every variant uses circular padding (the W3 setting: BCOP is orthogonal only with it), and
all variants are built in ONE process and timed in interleaved rounds (one call of each
variant per round), so that the load of a shared machine hits them alike; compare the
ratios, not the absolute times.

    PYTHONPATH=. TF_CPP_MIN_LOG_LEVEL=3 python benchmarks/bcop.py            # 20 timed rounds
    PYTHONPATH=. TF_CPP_MIN_LOG_LEVEL=3 python benchmarks/bcop.py --steps 2  # smoke run

Variants: ``plain`` (stock Conv2D after CircularPadding2D, ReLU, max pooling, Dense),
``plain_lip_act`` (the same stock convolutions and dense layers with the Lipschitz model's
GroupSort2 and L2-norm pooling: the reference for the *conv part* of exported inference),
and the Lipschitz W2 with ``SpectralConv2D``, ``BCOPConv2D``, ``RKOConv2D``,
``OSSNConv2D`` (dense layers stay ``SpectralDense``, as in W2/W3).

Figures (ms per batch of 256, median over the rounds): ``train`` (``train_on_batch``),
``infer`` (``predict_on_batch`` of the unexported model, cached kernels) and
``export`` (``predict_on_batch`` of ``vanilla_export()``). Ratios: train / plain train,
train / SpectralConv2D train, export / plain infer, export / plain_lip_act infer (conv part).
``rss_step_mb``: growth of the process's peak RSS while the variant was built and warmed up
(variants are warmed one after the other); ``peak_rss_mb`` is the whole process's.
"""

import argparse
import json
import os
import resource
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import train_step  # noqa: E402  (the W1/W2 definitions and the fixed batch live there)

WORKLOAD = "W2"
LIPSCHITZ_CONVS = ("SpectralConv2D", "BCOPConv2D", "RKOConv2D", "OSSNConv2D")
VARIANTS = ("plain", "plain_lip_act") + LIPSCHITZ_CONVS


def build_variant(variant):
    """The W2 model of `variant`, every convolution circular."""
    if variant == "plain":
        return train_step.build_model(WORKLOAD, "plain", padding="circular")
    if variant in LIPSCHITZ_CONVS:
        return train_step.build_model(WORKLOAD, "lip", conv_name=variant, padding="circular")
    import keras

    plain = train_step._layer_factories("plain", None, "circular")
    lipschitz = train_step._layer_factories("lip", "SpectralConv2D", "circular")
    factories = dict(lipschitz, conv=plain["conv"], dense=plain["dense"])
    layers = [keras.Input(train_step.WORKLOADS[WORKLOAD]["input_shape"])]
    for kind, *size in train_step.WORKLOADS[WORKLOAD]["layers"]:
        layers.extend(factories[kind](*size))
    return keras.Sequential(layers, name=f"{WORKLOAD}_{variant}")


def _peak_rss_mb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _timed(function):
    start = time.perf_counter()
    value = function()
    return 1000.0 * (time.perf_counter() - start), value


def prepare(variants, warmup):
    """Build, compile and warm up every variant in turn; returns name -> dict of callables and facts."""
    import keras
    import numpy as np

    x, y = train_step.fixed_batch(WORKLOAD)
    prepared = {}
    for variant in variants:
        keras.utils.set_random_seed(0)
        rss_before = _peak_rss_mb()
        model = build_variant(variant)
        model.compile(
            optimizer=keras.optimizers.Adam(train_step.LEARNING_RATE),
            loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        )
        entry = {
            "model": model,
            "train": lambda m=model: float(m.train_on_batch(x, y)),
            "infer": lambda m=model: m.predict_on_batch(x),
            "losses": [],
        }
        for _ in range(warmup):
            entry["losses"].append(entry["train"]())
            entry["infer"]()
        if variant in LIPSCHITZ_CONVS:
            exported = model.vanilla_export()
            entry["export"] = lambda e=exported: e.predict_on_batch(x)
            for _ in range(warmup):
                entry["export"]()
            entry["export_max_abs_diff"] = float(np.abs(entry["export"]() - entry["infer"]()).max())
        entry["rss_step_mb"] = _peak_rss_mb() - rss_before
        prepared[variant] = entry
    return prepared


def run_rounds(prepared, steps):
    """Interleaved timing: each round calls every figure of every variant once."""
    times = {variant: {"train": [], "infer": [], "export": []} for variant in prepared}
    cpu_start, wall_start = time.process_time(), time.perf_counter()
    for _ in range(steps):
        for variant, entry in prepared.items():
            for figure in ("train", "infer", "export"):
                if figure in entry:
                    elapsed, value = _timed(entry[figure])
                    times[variant][figure].append(elapsed)
                    if figure == "train":
                        entry["losses"].append(value)
    cpu_util = (time.process_time() - cpu_start) / (time.perf_counter() - wall_start)
    return times, cpu_util


def summarize(prepared, times):
    import math

    results = {}
    for variant, entry in prepared.items():
        result = {f"{figure}_ms": statistics.median(values) for figure, values in times[variant].items() if values}
        result["rss_step_mb"] = entry["rss_step_mb"]
        result["losses_finite"] = all(math.isfinite(loss) for loss in entry["losses"])
        result["first_loss"], result["final_loss"] = entry["losses"][0], entry["losses"][-1]
        if "export_max_abs_diff" in entry:
            result["export_max_abs_diff"] = entry["export_max_abs_diff"]
        results[variant] = result
    plain = results.get("plain", {})
    spectral = results.get("SpectralConv2D", {})
    lip_act = results.get("plain_lip_act", {})
    for result in results.values():
        for key, numerator, reference in (
            ("train_vs_plain", "train_ms", plain.get("train_ms")),
            ("train_vs_spectral", "train_ms", spectral.get("train_ms")),
            ("infer_vs_plain", "infer_ms", plain.get("infer_ms")),
            ("export_vs_plain", "export_ms", plain.get("infer_ms")),
            ("export_conv_part", "export_ms", lip_act.get("infer_ms")),
        ):
            if numerator in result and reference:
                result[key] = result[numerator] / reference
    return results


def markdown_table(results):
    columns = [
        ("train ms", "train_ms", "{:.0f}"), ("/ plain", "train_vs_plain", "{:.2f}x"),
        ("/ SpectralConv2D", "train_vs_spectral", "{:.2f}x"), ("infer ms", "infer_ms", "{:.0f}"),
        ("export ms", "export_ms", "{:.0f}"), ("export / plain", "export_vs_plain", "{:.2f}x"),
        ("export / plain_lip_act (conv part)", "export_conv_part", "{:.2f}x"),
        ("RSS step MB", "rss_step_mb", "{:.0f}"), ("export diff", "export_max_abs_diff", "{:.1e}"),
        ("first / final loss", None, None), ("finite", "losses_finite", None),
    ]  # fmt: skip
    lines = ["| variant | " + " | ".join(name for name, _, _ in columns) + " |", "|---" * (len(columns) + 1) + "|"]
    for variant, result in results.items():
        cells = []
        for _, key, pattern in columns:
            if key is None:
                cells.append(f"{result['first_loss']:.4f} / {result['final_loss']:.4f}")
            elif key == "losses_finite":
                cells.append("yes" if result[key] else "NO")
            else:
                cells.append(pattern.format(result[key]) if key in result else "")
        lines.append(f"| {variant} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=20, help="timed rounds (>= 20 for reported figures)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed calls of each figure before timing")
    parser.add_argument("--variants", nargs="+", choices=VARIANTS, default=list(VARIANTS))
    parser.add_argument("--json", dest="json_path", help="also write the results to this JSON file")
    args = parser.parse_args(argv)
    if args.steps < 1 or args.warmup < 1:
        parser.error("--steps and --warmup must be >= 1")

    prepared = prepare(args.variants, args.warmup)
    times, cpu_util = run_rounds(prepared, args.steps)
    results = summarize(prepared, times)
    meta = {
        "machine": train_step.machine_description(),
        "workload": WORKLOAD,
        "batch_size": train_step.BATCH_SIZE,
        "padding": "circular",
        "steps": args.steps,
        "warmup": args.warmup,
        "cpu_util": cpu_util,
        "peak_rss_mb": _peak_rss_mb(),
    }
    print(
        f"W2 (circular), batch {meta['batch_size']}, median of {args.steps} interleaved rounds after "
        f"{args.warmup} warm-up calls; {meta['machine']}; cpu_util {cpu_util:.2f}; "
        f"process peak RSS {meta['peak_rss_mb']:.0f} MB\n"
    )
    print(markdown_table(results))
    if args.json_path:
        with open(args.json_path, "w") as handle:
            json.dump({"meta": meta, "results": results}, handle, indent=2)
    return 0 if all(result["losses_finite"] for result in results.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
