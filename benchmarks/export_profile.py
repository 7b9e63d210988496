"""Where an exported model's time goes: TensorFlow's profiler over plain, floor and export calls, alternated.

`export_floor.py` says how far an export is from the plain model; this script says where the
difference is. It builds the models of `export_floor.workload_models` (plain, floor, export; the
other variants with `--variants`), calls their `predict_on_batch` in turn as `export_floor.py` does,
records `--steps` rounds with TensorFlow's profiler, and reports per call (median over the calls)
the time of each kind of kernel:

* `conv + matmul`: oneDNN convolutions and matrix products (their ReLU fused in, for plain);
* `pool + elementwise`: native pooling, `Maximum`/`Relu`/`Minimum` passes (the floor's ReLU);
* `XLA run`: the fused computations of the export (`CpuExecutable::ExecuteAsyncOnStream`: its
  GroupSort2 and its sort + L2-norm poolings);
* `XLA launch`: what TensorFlow's executor spends around each of them (`ProcessAsync` start and done,
  less the run): looking up the compiled executable, preparing its buffers, handing the op back.

On the 2-core AMD EPYC of docs/benchmarks.md, W1's export spends 0.1-0.2 ms more in its XLA runs
than the plain model in its max poolings, and 0.3-0.4 ms launching its three XLA computations (0.1-0.2
ms each once the convolutions between them have evicted the caches, 16 us in a tight loop): together
about what keeps W1's export above 1.05x there.

TensorFlow only (its profiler); the trace is converted with TensorFlow's private
`_pywrap_profiler_plugin`, which the TensorBoard profile plugin uses.

Usage:
    PYTHONPATH=. TF_CPP_MIN_LOG_LEVEL=3 python benchmarks/export_profile.py --workloads W1 --steps 40
"""

from __future__ import annotations

import argparse
import collections
import glob
import gzip
import json
import os
import statistics
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import export_floor  # noqa: E402  (the models and their checks live there)

# Kernel event names (TensorFlow op types, XLA runtime scopes) -> the column that counts them.
KERNEL_KINDS = {
    "conv + matmul": ("Conv2D", "MatMul"),
    "pool + elementwise": ("Pool", "Maximum", "Minimum", "Relu"),
}
XLA_RUN = "CpuExecutable::ExecuteAsyncOnStream"
XLA_LAUNCH = ("ExecutorState::ProcessAsync::Start", "ExecutorState::ProcessAsync::Done")
COLUMNS = ("conv + matmul", "pool + elementwise", "XLA run", "XLA launch")


def _kind(name):
    """The column of a kernel event's `name`, or None for the events no column counts."""
    if name == XLA_RUN:
        return "XLA run"
    if name in XLA_LAUNCH:
        return "XLA launch"
    for kind, parts in KERNEL_KINDS.items():
        if any(part in name for part in parts):
            return kind
    return None


def traced_events(models, x, steps, warmup):
    """Complete trace events ({name, ts, dur} in us) of `steps` alternated rounds of `predict_on_batch`, each
    call inside a profiler scope named after its variant."""
    import tensorflow as tf
    from tensorflow.python.profiler.internal import _pywrap_profiler_plugin

    for _ in range(warmup):
        for model in models.values():
            model.predict_on_batch(x)
    with tempfile.TemporaryDirectory() as logdir:
        tf.profiler.experimental.start(logdir)
        try:
            for _ in range(steps):
                for name, model in models.items():
                    with tf.profiler.experimental.Trace(name):
                        model.predict_on_batch(x)
        finally:
            tf.profiler.experimental.stop()
        (xspace,) = glob.glob(os.path.join(logdir, "**", "*.xplane.pb"), recursive=True)
        data, converted = _pywrap_profiler_plugin.xspace_to_tools_data([xspace], "trace_viewer@", {})
    if not converted:
        raise RuntimeError(f"TensorFlow could not convert its trace: {data[:200]!r}")
    if data[:2] == b"\x1f\x8b":
        data = gzip.decompress(data)
    return [event for event in json.loads(data)["traceEvents"] if event.get("ph") == "X"]


def per_call_breakdown(events, variants):
    """{variant: {"per call": ms, column: ms}}: medians over the calls of each variant's scope."""
    calls = sorted((e["ts"], e["ts"] + e["dur"], e["name"]) for e in events if e["name"] in variants)
    kernels = sorted((e["ts"], e["dur"], _kind(e["name"])) for e in events if _kind(e["name"]))
    per_call = {name: collections.defaultdict(list) for name in variants}
    position = 0
    for start, end, name in calls:
        totals = dict.fromkeys(COLUMNS, 0.0)
        while position < len(kernels) and kernels[position][0] < start:
            position += 1
        scan = position
        while scan < len(kernels) and kernels[scan][0] < end:
            totals[kernels[scan][2]] += kernels[scan][1]
            scan += 1
        totals["XLA launch"] -= totals["XLA run"]  # the start scope holds the run
        totals["per call"] = end - start
        for column, microseconds in totals.items():
            per_call[name][column].append(microseconds / 1000.0)
    return {
        name: {column: statistics.median(values) for column, values in columns.items()}
        for name, columns in per_call.items()
    }


def markdown_table(rows):
    """One line per workload and variant: ms per call and per column, and the call's ratio to plain."""
    header = ["workload", "variant", "per call (ms)", "/ plain", *COLUMNS]
    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    for row in rows:
        plain = row["breakdown"]["plain"]["per call"]
        for variant, figures in row["breakdown"].items():
            cells = [f"{figures[column]:.2f}" for column in COLUMNS]
            ratio = figures["per call"] / plain
            lines.append(
                f"| {row['workload']} | {variant} | {figures['per call']:.2f} | {ratio:.2f}x | "
                + " | ".join(cells)
                + " |"
            )
    return "\n".join(lines)


def profile(workload, variants, steps, warmup):
    """The breakdown of `variants` of `workload` (see the module docstring)."""
    x, models = export_floor.workload_models(workload)
    chosen = {name: models[name] for name in variants}
    events = traced_events(chosen, x, steps, warmup)
    return {"workload": workload, "steps": steps, "breakdown": per_call_breakdown(events, variants)}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workloads", nargs="+", default=["W1"], choices=["W1", "W2"])
    parser.add_argument(
        "--variants",
        nargs="+",
        default=["plain", "floor", "export"],
        choices=["plain", "floor", "export", "export_spatial", "export_functional"],
    )
    parser.add_argument("--steps", type=int, default=40, help="traced calls per variant (alternated)")
    parser.add_argument("--warmup", type=int, default=5, help="untraced calls per variant first")
    parser.add_argument("--json", help="write the rows and the machine description to this file")
    args = parser.parse_args(argv)
    if os.environ.get("KERAS_BACKEND", "tensorflow") != "tensorflow":
        parser.error("export_profile.py reads TensorFlow's profiler: run it with KERAS_BACKEND unset or tensorflow")
    if "plain" not in args.variants:
        parser.error("--variants must include plain (the ratios divide by it)")
    rows = []
    for workload in args.workloads:
        print(f"{workload}: profiling {', '.join(args.variants)} ({args.steps} alternated calls each)...", flush=True)
        rows.append(profile(workload, args.variants, args.steps, args.warmup))
    print(markdown_table(rows))
    if args.json:
        with open(args.json, "w") as file:
            timing = export_floor.train_step
            described = {"machine": timing.machine_description(), **timing._versions()}
            json.dump({**described, "rows": rows}, file, indent=2)


if __name__ == "__main__":
    main()
