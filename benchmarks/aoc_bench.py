"""W2 ("cifar-conv", shared/bench/WORKLOADS.md) with `AOCConv2D` in place of SConv, against plain Conv2D.

All variants use circular padding (AOC is orthogonal only with it) and are built in ONE process,
then timed in interleaved rounds with the machinery of `benchmarks/bcop.py` (one call of each
figure of each variant per round), so a shared machine's load hits them alike: compare ratios.

    PYTHONPATH=. TF_CPP_MIN_LOG_LEVEL=3 python benchmarks/aoc_bench.py --steps 5   # few repeats
    PYTHONPATH=. TF_CPP_MIN_LOG_LEVEL=3 python benchmarks/aoc_bench.py --steps 20  # reported figures

Variants: ``plain`` (CircularPadding2D + stock Conv2D, ReLU, max pooling, Dense), ``plain_lip_act``
(stock convs/dense with GroupSort2 and L2-norm pooling: the reference of the exported conv part),
``SpectralConv2D``, ``BCOPConv2D`` and ``AOCConv2D`` (dense layers stay ``SpectralDense``).
Figures: train step, inference, exported inference (ms per batch of 256), their ratios to plain,
and ``rss_step_mb`` (growth of peak RSS while the variant is built and warmed up).
"""

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import bcop  # noqa: E402  (interleaved timing and the table)
import train_step  # noqa: E402  (the W2 definition and the fixed batch)

AOC_VARIANTS = ("plain", "plain_lip_act", "SpectralConv2D", "BCOPConv2D", "AOCConv2D")


def build_aoc_w2():
    """The W2 Lipschitz model with every SConv replaced by `AOCConv2D(filters, 3, padding="circular")`."""
    return train_step.build_model(bcop.WORKLOAD, "lip", conv_name="AOCConv2D", padding="circular")


def prepare(variants, warmup):
    """Build, compile and warm up every variant; `bcop.prepare` for the others, plus AOCConv2D."""
    import keras
    import numpy as np

    prepared = bcop.prepare([v for v in variants if v != "AOCConv2D"], warmup)
    if "AOCConv2D" in variants:
        x, y = train_step.fixed_batch(bcop.WORKLOAD)
        keras.utils.set_random_seed(0)
        rss_before = bcop._peak_rss_mb()
        model = build_aoc_w2()
        model.compile(
            optimizer=keras.optimizers.Adam(train_step.LEARNING_RATE),
            loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        )
        entry = {
            "train": lambda: float(model.train_on_batch(x, y)),
            "infer": lambda: model.predict_on_batch(x),
            "losses": [],
        }
        for _ in range(warmup):
            entry["losses"].append(entry["train"]())
            entry["infer"]()
        exported = model.vanilla_export()
        entry["export"] = lambda: exported.predict_on_batch(x)
        for _ in range(warmup):
            entry["export"]()
        entry["export_max_abs_diff"] = float(np.abs(entry["export"]() - entry["infer"]()).max())
        entry["rss_step_mb"] = bcop._peak_rss_mb() - rss_before
        prepared["AOCConv2D"] = entry
    return prepared


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=20, help="timed rounds (>= 20 for reported figures)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed calls of each figure before timing")
    parser.add_argument("--variants", nargs="+", choices=AOC_VARIANTS, default=list(AOC_VARIANTS))
    parser.add_argument("--json", dest="json_path", help="also write the results to this JSON file")
    args = parser.parse_args(argv)
    if args.steps < 1 or args.warmup < 1:
        parser.error("--steps and --warmup must be >= 1")
    prepared = prepare(args.variants, args.warmup)
    times, cpu_util = bcop.run_rounds(prepared, args.steps)
    results = bcop.summarize(prepared, times)
    meta = {
        "machine": train_step.machine_description(),
        "workload": bcop.WORKLOAD,
        "batch_size": train_step.BATCH_SIZE,
        "padding": "circular",
        "steps": args.steps,
        "warmup": args.warmup,
        "cpu_util": cpu_util,
        "peak_rss_mb": bcop._peak_rss_mb(),
    }
    print(
        f"W2 (circular), batch {meta['batch_size']}, median of {args.steps} interleaved rounds after "
        f"{args.warmup} warm-up calls; {meta['machine']}; cpu_util {cpu_util:.2f}; "
        f"process peak RSS {meta['peak_rss_mb']:.0f} MB\n"
    )
    print(bcop.markdown_table(results))
    if args.json_path:
        with open(args.json_path, "w") as handle:
            json.dump({"meta": meta, "results": results}, handle, indent=2)
    return 0 if all(result["losses_finite"] for result in results.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
