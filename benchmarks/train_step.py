"""Time the reference workloads W1/W2 (shared/bench/WORKLOADS.md): Lipschitz vs plain Keras.

Both variants of a workload are built in one process and their calls alternate (plain,
Lipschitz, exported, plain, ...), so that both see the same machine load; each workload
runs in its own subprocess (this script re-invoked with ``--one W1``), repeated
``--repeats`` times. The parent prints one markdown table with the ratios to the plain
variant of the same run. Backend-neutral: set KERAS_BACKEND=jax or torch for their ratios.

    PYTHONPATH=. TF_CPP_MIN_LOG_LEVEL=3 python benchmarks/train_step.py --workloads W1
    KERAS_BACKEND=jax PYTHONPATH=. python benchmarks/train_step.py --workloads W1
    python benchmarks/train_step.py --workloads W2 --steps 5            # smoke run
    python benchmarks/train_step.py --conv BCOPConv2D --padding circular --workloads W2

Figures (ms per batch of 256, median of ``--steps`` timed calls after ``--warmup``):
``train_step`` (``train_on_batch``), ``infer`` (``predict_on_batch`` of the unexported
model), ``infer_trainflag`` (``model(x, training=True)`` compiled for the backend, no
gradient), ``infer_export`` (``predict_on_batch`` of ``model.vanilla_export()``), and
``peak_rss`` (``ru_maxrss`` of the subprocess, both models together). Ratios: Lipschitz /
plain, with ``infer_export`` compared with the plain model's ``infer``.
"""

import argparse
import datetime
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time

BATCH_SIZE = 256
NUM_CLASSES = 10
LEARNING_RATE = 1e-4
RESULT_MARKER = "BENCH_RESULT_JSON "

# Layer sequences of WORKLOADS.md; ("conv", filters), ("dense", units), and the
# parameter-free ("act",), ("pool",), ("flatten",).
WORKLOADS = {
    "W1": {
        "input_shape": (28, 28, 1),
        "layers": [
            ("conv", 16),
            ("act",),
            ("pool",),
            ("conv", 32),
            ("act",),
            ("pool",),
            ("flatten",),
            ("dense", 64),
            ("act",),
            ("dense", NUM_CLASSES),
        ],
    },
    "W2": {
        "input_shape": (32, 32, 3),
        "layers": [
            ("conv", 64),
            ("act",),
            ("conv", 64),
            ("act",),
            ("pool",),
            ("conv", 128),
            ("act",),
            ("conv", 128),
            ("act",),
            ("pool",),
            ("flatten",),
            ("dense", 256),
            ("act",),
            ("dense", NUM_CLASSES),
        ],
    },
}
VARIANTS = ("plain", "lip")
PADDINGS = ("same", "circular")


# ---------------------------------------------------------------- one measurement


def _layer_factories(variant, conv_name, padding):
    """kind -> function(size) returning the list of Keras layers for that step."""
    import keras

    if variant == "plain":

        def conv(filters):
            if padding == "circular":
                # Stock Keras has no circular padding: explicit wrap-around, then "valid",
                # as the exported circular Lipschitz model does (WORKLOADS.md, W3 reference).
                from deel_lip_ext.layers import CircularPadding2D

                return [CircularPadding2D(1), keras.layers.Conv2D(filters, 3, padding="valid")]
            return [keras.layers.Conv2D(filters, 3, padding="same")]

        return {
            "conv": conv,
            "dense": lambda units: [keras.layers.Dense(units)],
            "act": lambda: [keras.layers.ReLU()],
            "pool": lambda: [keras.layers.MaxPooling2D(2, strides=2)],
            "flatten": lambda: [keras.layers.Flatten()],
        }

    from deel_lip_ext import layers as lip_layers

    conv_class = _conv_class(conv_name)
    return {
        "conv": lambda filters: [conv_class(filters, 3, padding=padding)],
        "dense": lambda units: [lip_layers.SpectralDense(units)],
        "act": lambda: [lip_layers.GroupSort2()],
        "pool": lambda: [lip_layers.ScaledL2NormPooling2D(pool_size=(2, 2))],
        "flatten": lambda: [keras.layers.Flatten()],
    }


def _conv_class(conv_name):
    from deel_lip_ext import layers as lip_layers

    conv_class = getattr(lip_layers, conv_name, None)
    if conv_class is None:
        available = sorted(name for name in dir(lip_layers) if name.endswith("Conv2D"))
        raise ValueError(f"--conv must name a class of deel_lip_ext.layers, one of {available}; got {conv_name!r}.")
    return conv_class


def build_model(workload, variant, conv_name="SpectralConv2D", padding="same"):
    """The Keras model of `workload` ("W1"/"W2") for `variant` ("plain"/"lip")."""
    import keras

    spec = WORKLOADS[workload]
    factories = _layer_factories(variant, conv_name, padding)
    layers = [keras.Input(spec["input_shape"])]
    for kind, *size in spec["layers"]:
        layers.extend(factories[kind](*size))
    if variant == "plain":
        return keras.Sequential(layers, name=f"{workload}_plain")
    from deel_lip_ext.model import Sequential

    return Sequential(layers, name=f"{workload}_lip")


def fixed_batch(workload):
    """x ~ N(0, 1) float32 and y uniform in [0, 10), seed 0, built once (WORKLOADS.md)."""
    import numpy as np

    rng = np.random.default_rng(0)
    x = rng.standard_normal((BATCH_SIZE,) + WORKLOADS[workload]["input_shape"]).astype(np.float32)
    y = rng.integers(0, NUM_CLASSES, size=BATCH_SIZE)
    return x, y


def _alternated_median_ms(functions, steps, warmup):
    """Median wall time in ms of each function of `functions` (name -> callable) over `steps` rounds
    that call them in turn, after `warmup` rounds: alternated, every variant sees the same load.
    Returns ({name: ms}, {name: values returned}, {name: process CPU s / wall s of its calls})."""
    for _ in range(warmup):
        for function in functions.values():
            function()
    durations = {name: [] for name in functions}
    values = {name: [] for name in functions}
    cpu_seconds = dict.fromkeys(functions, 0.0)
    for _ in range(steps):
        for name, function in functions.items():
            cpu_start, start = time.process_time(), time.perf_counter()
            values[name].append(function())
            durations[name].append(time.perf_counter() - start)
            cpu_seconds[name] += time.process_time() - cpu_start
    medians = {name: 1000.0 * statistics.median(times) for name, times in durations.items()}
    cpu_util = {name: cpu_seconds[name] / sum(durations[name]) for name in functions}
    return medians, values, cpu_util


def _compiled_model(workload, variant, conv_name, padding, jit_compile):
    import keras

    keras.utils.set_random_seed(0)
    model = build_model(workload, variant, conv_name, padding)
    model.compile(
        optimizer=keras.optimizers.Adam(LEARNING_RATE),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        jit_compile=jit_compile,
    )
    return model


def _forward_training(model):
    """`model(x, training=True)` compiled for the active backend, without gradient."""
    from keras import ops

    from deel_lip_ext._autodiff import graph_function

    forward = graph_function(lambda inputs: model(inputs, training=True), model.variables)
    return lambda x: ops.convert_to_numpy(forward(x))


def measure_pair(workload, steps, warmup, conv_name, padding, jit_compile):
    """The figures of both variants of `workload`, built in this process and called alternately.

    Returns {"plain": row, "lip": row}; `peak_rss_mb` is the process's (both models).
    """
    import keras
    import numpy as np

    x, y = fixed_batch(workload)
    models = {variant: _compiled_model(workload, variant, conv_name, padding, jit_compile) for variant in VARIANTS}
    first_losses = {variant: float(model.train_on_batch(x, y)) for variant, model in models.items()}
    train_ms, losses, cpu_util = _alternated_median_ms(
        {variant: (lambda m=model: float(m.train_on_batch(x, y))) for variant, model in models.items()}, steps, warmup
    )
    exported = models["lip"].vanilla_export()
    inference = {variant: (lambda m=model: m.predict_on_batch(x)) for variant, model in models.items()}
    inference["export"] = lambda: exported.predict_on_batch(x)
    infer_ms, _, _ = _alternated_median_ms(inference, steps, warmup)
    forwards = {variant: _forward_training(model) for variant, model in models.items()}
    trainflag_ms, _, _ = _alternated_median_ms(
        {variant: (lambda f=forward: f(x)) for variant, forward in forwards.items()}, steps, warmup
    )
    rows = {}
    for variant, model in models.items():
        all_losses = [first_losses[variant]] + losses[variant]
        rows[variant] = {
            "workload": workload,
            "variant": variant,
            "backend": keras.backend.backend(),
            "conv": ("Conv2D" if variant == "plain" else conv_name) + f"({padding})",
            "params": int(model.count_params()),
            "jit_compile": bool(model.jit_compile),
            "steps": steps,
            "train_step_ms": train_ms[variant],
            "infer_ms": infer_ms[variant],
            "infer_trainflag_ms": trainflag_ms[variant],
            "first_loss": all_losses[0],
            "final_loss": all_losses[-1],
            "losses_finite": bool(np.all(np.isfinite(all_losses))),
            "cpu_util": cpu_util[variant],
        }
    difference = np.abs(models["lip"].predict_on_batch(x) - exported.predict_on_batch(x))
    rows["lip"].update(infer_export_ms=infer_ms["export"], export_max_abs_diff=float(difference.max()))
    peak_rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    for row in rows.values():
        row["peak_rss_mb"] = peak_rss_mb
    return rows


def measure_one(workload, variant, steps, warmup, conv_name, padding, jit_compile):
    """The row of one variant from `measure_pair` (both variants are measured, alternated)."""
    return measure_pair(workload, steps, warmup, conv_name, padding, jit_compile)[variant]


# ---------------------------------------------------------------- orchestration


def run_subprocess(workload, args):
    """Run `--one workload` in a fresh interpreter and return its rows (one per variant)."""
    command = [
        sys.executable,
        os.path.abspath(__file__),
        "--one",
        workload,
        "--steps",
        str(args.steps),
        "--warmup",
        str(args.warmup),
        "--conv",
        args.conv,
        "--padding",
        args.padding,
        "--jit-compile",
        args.jit_compile,
    ]
    environment = dict(os.environ)
    environment.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    repository = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    environment["PYTHONPATH"] = os.pathsep.join(filter(None, [repository, environment.get("PYTHONPATH")]))
    completed = subprocess.run(command, capture_output=True, text=True, env=environment)
    for line in completed.stdout.splitlines():
        if line.startswith(RESULT_MARKER):
            return json.loads(line[len(RESULT_MARKER) :])
    error_tail = " | ".join((completed.stderr or completed.stdout).strip().splitlines()[-5:])
    return [{"workload": workload, "variant": variant, "error": error_tail} for variant in VARIANTS]


def _median_of_runs(runs):
    """One result per (workload, variant): numeric figures are medians over the runs."""
    merged = dict(runs[0])
    for key, value in runs[0].items():
        if isinstance(value, float):
            merged[key] = statistics.median(run[key] for run in runs)
    merged["losses_finite"] = all(run.get("losses_finite", False) for run in runs)
    merged["runs"] = len(runs)
    return merged


def add_ratios(results):
    """Lipschitz / plain ratios within the same run (WORKLOADS.md's `ratio_to_plain`)."""
    plain = {r["workload"]: r for r in results if r["variant"] == "plain" and "error" not in r}
    for result in results:
        reference = plain.get(result["workload"])
        if reference is None or "error" in result:
            continue
        for figure, reference_figure in (
            ("train_step_ms", "train_step_ms"),
            ("infer_ms", "infer_ms"),
            ("infer_trainflag_ms", "infer_trainflag_ms"),
            ("infer_export_ms", "infer_ms"),
        ):
            if figure in result:
                result[figure.replace("_ms", "_ratio")] = result[figure] / reference[reference_figure]
    return results


# /proc/cpuinfo flag -> name, widest first.
_VECTOR_EXTENSIONS = (("avx512f", "AVX-512"), ("avx2", "AVX2"), ("avx", "AVX"))


def machine_description():
    """The CPU's name, its widest vector extension (AVX-512 or AVX2 decide which kernels oneDNN and XLA
    run), the logical core count and the OS."""
    cpu = vectors = None
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name") and cpu is None:
                    cpu = line.split(":", 1)[1].strip()
                elif line.startswith("flags") and vectors is None:
                    flags = line.split(":", 1)[1].split()
                    vectors = next((name for flag, name in _VECTOR_EXTENSIONS if flag in flags), "no AVX")
    except OSError:
        pass
    described = [cpu or platform.processor() or platform.machine()] + ([vectors] if vectors else [])
    return ", ".join(described + [f"{os.cpu_count()} logical cores", f"{platform.system()} {platform.release()}"])


def _versions():
    """Python, Keras, the Keras backend and its framework's version, and on TensorFlow whether its oneDNN
    kernels are on (read in a subprocess with this process's environment: TensorFlow turns them on by
    default only on some CPUs, `TF_ENABLE_ONEDNN_OPTS` decides otherwise, and the two differ by up to 2x
    on a convolution)."""
    versions = {"python": platform.python_version()}
    code = (
        "import importlib, json, keras; backend = keras.backend.backend(); "
        "found = {'keras': keras.__version__, 'backend': backend}\n"
        "found[backend] = importlib.import_module(backend).__version__\n"
        "if backend == 'tensorflow':\n"
        "    from tensorflow.python.util import _pywrap_util_port\n"
        "    found['onednn'] = bool(_pywrap_util_port.IsMklEnabled())\n"
        "print(json.dumps(found))"
    )
    output = (
        subprocess.run(
            [sys.executable, "-c", code],
            capture_output=True,
            text=True,
            env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"),
        )
        .stdout.strip()
        .splitlines()
    )
    if output:
        versions.update(json.loads(output[-1]))
    return versions


def _cell(result, key, pattern):
    value = result.get(key)
    return "" if value is None else pattern.format(value)


def markdown_table(results):
    header = (
        "| workload | variant | conv | train_step ms | ratio | infer ms | ratio "
        "| infer_trainflag ms | ratio | infer_export ms | ratio | peak RSS MB "
        "| export_max_abs_diff | first / final loss | finite | cpu_util |"
    )
    lines = [header, "|" + "---|" * (header.count("|") - 1)]
    for result in results:
        if "error" in result:
            lines.append(f"| {result['workload']} | {result['variant']} | failed: {result['error']} |")
            continue
        lines.append(
            "| "
            + " | ".join(
                [
                    result["workload"],
                    result["variant"],
                    result["conv"],
                    _cell(result, "train_step_ms", "{:.1f}"),
                    _cell(result, "train_step_ratio", "{:.2f}x"),
                    _cell(result, "infer_ms", "{:.1f}"),
                    _cell(result, "infer_ratio", "{:.2f}x"),
                    _cell(result, "infer_trainflag_ms", "{:.1f}"),
                    _cell(result, "infer_trainflag_ratio", "{:.2f}x"),
                    _cell(result, "infer_export_ms", "{:.1f}"),
                    _cell(result, "infer_export_ratio", "{:.2f}x"),
                    _cell(result, "peak_rss_mb", "{:.0f}"),
                    _cell(result, "export_max_abs_diff", "{:.1e}"),
                    f"{result['first_loss']:.4f} / {result['final_loss']:.4f}",
                    "yes" if result["losses_finite"] else "NO",
                    _cell(result, "cpu_util", "{:.2f}"),
                ]
            )
            + " |"
        )
    return "\n".join(lines)


def parse_arguments(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--workloads", nargs="+", choices=sorted(WORKLOADS), default=["W1"])
    parser.add_argument("--variants", nargs="+", choices=VARIANTS, default=list(VARIANTS))
    parser.add_argument(
        "--conv", default="SpectralConv2D", help="convolution class of deel_lip_ext.layers for the lip variant"
    )
    parser.add_argument(
        "--padding",
        choices=PADDINGS,
        default="same",
        help="padding of every convolution, plain ones included (circular: W3)",
    )
    parser.add_argument("--steps", type=int, default=20, help="timed calls per figure (>= 20 for reporting)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed calls before timing")
    parser.add_argument(
        "--repeats", type=int, default=1, help="subprocesses per (workload, variant); figures are medians over them"
    )
    parser.add_argument(
        "--jit-compile",
        choices=("auto", "true", "false"),
        default="auto",
        help="Keras compile(jit_compile=...); auto = no XLA on CPU-only machines",
    )
    parser.add_argument("--json", dest="json_path", help="also write the results to this JSON file")
    parser.add_argument("--one", metavar="WORKLOAD", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    for name in ("steps", "warmup", "repeats"):
        if getattr(args, name) < (0 if name == "warmup" else 1):
            parser.error(f"--{name} must be a {'non-negative' if name == 'warmup' else 'positive'} integer")
    if args.one and args.one not in WORKLOADS:
        parser.error(f"--one needs a workload in {sorted(WORKLOADS)}")
    return args


def main(argv=None):
    args = parse_arguments(argv)
    jit_compile = {"auto": "auto", "true": True, "false": False}[args.jit_compile]
    if args.one:
        rows = measure_pair(args.one, args.steps, args.warmup, args.conv, args.padding, jit_compile)
        print(RESULT_MARKER + json.dumps([rows[variant] for variant in args.variants]), flush=True)
        return 0

    # Both variants alternate within each process; the repeats are fresh processes.
    runs = {}
    for _ in range(args.repeats):
        for workload in args.workloads:
            for result in run_subprocess(workload, args):
                if result["variant"] in args.variants:
                    runs.setdefault((workload, result["variant"]), []).append(result)
    results = []
    for key, key_runs in runs.items():
        failed = [run for run in key_runs if "error" in run]
        results.append(failed[0] if failed else _median_of_runs(key_runs))
    add_ratios(results)

    meta = {
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "machine": machine_description(),
        **_versions(),
        "batch_size": BATCH_SIZE,
        "steps": args.steps,
        "warmup": args.warmup,
        "repeats": args.repeats,
        "conv": args.conv,
        "padding": args.padding,
    }
    print(f"Benchmark {meta['date']} on {meta['machine']}")
    print(
        f"Keras {meta.get('keras')} / {meta.get('backend')} {meta.get(meta.get('backend'))}, batch {BATCH_SIZE}, "
        f"median of {args.steps} timed calls after {args.warmup} warm-up calls (both variants alternated "
        f"in one process), {args.repeats} process(es) per workload\n"
    )
    print(markdown_table(results))
    if args.json_path:
        with open(args.json_path, "w") as handle:
            json.dump({"meta": meta, "results": results}, handle, indent=2)
    return 1 if any("error" in result for result in results) else 0


if __name__ == "__main__":
    sys.exit(main())
