"""The spectral (RKO) parametrization of W1's and W2's kernels, forward and gradient, against another commit.

`reshaped_kernel_orthogonalization` (power iteration, then Björck) runs once per kernel per
training step, whatever the batch size. This script times it, forward and gradient in one
compiled function, for the kernel shapes of the two workloads, in two versions of the library
built in one process with their calls alternated (as `train_step.py` does):

* `base`: the parametrization modules (`deel_lip_ext/_loops.py`,
  `deel_lip_ext/parametrizations/{iteration,orthogonal}.py`) as they are at `--base`
  (read with `git show`, imported under other names);
* `now`: the working tree.

Kernels start orthonormal plus a perturbation that spreads their singular values over
[0.6, 1] x 3 (`--spread 0.6`: 5 Björck iterations at eps 1e-3), with a warm power-iteration
vector, and the library defaults (eps 1e-3). W1's dense kernel after three epochs on MNIST has
a condition number of 2.8 (7 iterations): `--spread 0.35` ([0.35, 1] x 3, 7 iterations) stands
for it. The script also prints the largest difference of the two versions' kernels and
gradients (they compute the same function).

Usage:
    PYTHONPATH=. TF_CPP_MIN_LOG_LEVEL=3 python benchmarks/parametrization.py --base d03aa07 --json param.json
    python benchmarks/parametrization.py --table param.json    # the markdown table of docs/benchmarks.md
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys
import tempfile

# (workload, layer): the matrix (rows, columns) the RKO orthonormalizes, and its adjustment factor.
KERNELS = {
    "W1 conv 1 (3x3x1 -> 16)": ((9, 16), 1.0 / 3.0),
    "W1 conv 2 (3x3x16 -> 32)": ((144, 32), 1.0 / 3.0),
    "W1 dense (1568 -> 64)": ((1568, 64), 1.0),
    "W1 logits (64 -> 10)": ((64, 10), 1.0),
    "W2 conv 1 (3x3x3 -> 64)": ((27, 64), 1.0 / 3.0),
    "W2 conv 2 (3x3x64 -> 64)": ((576, 64), 1.0 / 3.0),
    "W2 conv 3 (3x3x64 -> 128)": ((576, 128), 1.0 / 3.0),
    "W2 conv 4 (3x3x128 -> 128)": ((1152, 128), 1.0 / 3.0),
    "W2 dense (8192 -> 256)": ((8192, 256), 1.0),
    "W2 logits (256 -> 10)": ((256, 10), 1.0),
}
MODULES = {  # module name in the library -> (path, name it is imported under for the base)
    "deel_lip_ext._loops": ("deel_lip_ext/_loops.py", "base_loops"),
    "deel_lip_ext.parametrizations.iteration": ("deel_lip_ext/parametrizations/iteration.py", "base_iteration"),
    "deel_lip_ext.parametrizations.orthogonal": ("deel_lip_ext/parametrizations/orthogonal.py", "base_orthogonal"),
}


def base_orthogonal_module(commit, directory):
    """`deel_lip_ext.parametrizations.orthogonal` as it is at `commit`, importing its siblings from there too."""
    module = None
    for library_name, (path, name) in MODULES.items():
        source = subprocess.run(["git", "show", f"{commit}:{path}"], check=True, capture_output=True, text=True).stdout
        for other, (_, other_name) in MODULES.items():
            source = source.replace(f"from {other} import", f"from {other_name} import")
        file = os.path.join(directory, f"{name}.py")
        with open(file, "w") as handle:
            handle.write(source)
        spec = importlib.util.spec_from_file_location(name, file)
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return module


def spread_kernel(shape, rng, low=0.6):
    """A (rows, columns) matrix with singular values spread over [3 low, 3] (a trained kernel's spread), and a
    power-iteration vector (1, columns) near its top right singular vector (a warm start)."""
    import numpy as np

    tall = shape if shape[0] >= shape[1] else shape[::-1]
    left, _ = np.linalg.qr(rng.standard_normal(tall))
    right, _ = np.linalg.qr(rng.standard_normal((tall[1], tall[1])))
    matrix = (left * np.linspace(3.0 * low, 3.0, tall[1])) @ right.T
    matrix = matrix if shape[0] >= shape[1] else matrix.T
    top = np.linalg.svd(matrix)[2][:1]
    return matrix.astype("float32"), (top + 0.01 * rng.standard_normal(top.shape)).astype("float32")


def step_function(module, kernel, vector, upstream, coefficient):
    """Forward and gradient of `sum(upstream * RKO(kernel))`, compiled for the backend."""

    import keras

    from deel_lip_ext._autodiff import graph_function, value_and_input_gradient

    upstream = keras.ops.convert_to_tensor(upstream)

    def weighted_kernel(x):
        return upstream * module.reshaped_kernel_orthogonalization(x, vector, coefficient)[0], ()

    return graph_function(lambda x: value_and_input_gradient(weighted_kernel, x)[2])


def measure(base, steps, warmup, low=0.6):
    """{kernel: {"base_ms", "now_ms", "ratio", "max_gradient_difference"}}."""
    import keras
    import numpy as np

    from deel_lip_ext.parametrizations import orthogonal
    from train_step import _alternated_median_ms

    rng = np.random.default_rng(0)
    results = {}
    with tempfile.TemporaryDirectory() as directory:
        versions = {"base": base_orthogonal_module(base, directory), "now": orthogonal}
        for name, (shape, coefficient) in KERNELS.items():
            kernel, vector = spread_kernel(shape, rng, low)
            upstream = rng.standard_normal(shape).astype("float32")
            functions = {
                version: step_function(module, kernel, vector, upstream, coefficient)
                for version, module in versions.items()
            }
            medians, values, _ = _alternated_median_ms(
                {
                    version: (lambda f=function: keras.ops.convert_to_numpy(f(kernel)))
                    for version, function in functions.items()
                },
                steps,
                warmup,
            )
            difference = float(np.abs(values["base"][-1] - values["now"][-1]).max())
            results[name] = {
                "shape": list(shape),
                "base_ms": medians["base"],
                "now_ms": medians["now"],
                "ratio": medians["now"] / medians["base"],
                "max_gradient_difference": difference,
            }
            print(
                f"{name:28s} base {medians['base']:7.3f} ms  now {medians['now']:7.3f} ms  "
                f"now/base {medians['now'] / medians['base']:.2f}x  |gradient difference| {difference:.1e}",
                flush=True,
            )
    return results


def markdown_table(path):
    """The figures of a `--json` file as the markdown table of `docs/benchmarks.md`."""
    with open(path) as handle:
        figures = json.load(handle)
    lines = [
        f"| kernel ({figures['backend']}) | matrix | {figures['base']} ms | now ms | now / {figures['base']} |",
        "|---|---|---|---|---|",
    ]
    for name, row in figures["kernels"].items():
        rows, columns = row["shape"]
        lines.append(
            f"| {name} | {rows} x {columns} | {row['base_ms']:.2f} | {row['now_ms']:.2f} | {row['ratio']:.2f}x |"
        )
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--table", metavar="JSON", help="print the markdown table of a --json file and exit")
    parser.add_argument("--base", help="commit whose parametrization modules are the baseline")
    parser.add_argument("--steps", type=int, default=100, help="timed rounds (each calls both versions)")
    parser.add_argument("--warmup", type=int, default=5, help="untimed rounds first")
    parser.add_argument(
        "--spread", type=float, default=0.6, help="smallest singular value over the largest (default 0.6)"
    )
    parser.add_argument("--json", help="write the figures to this file")
    args = parser.parse_args(argv)
    if args.table:
        print(markdown_table(args.table))
        return
    if not args.base:
        parser.error("--base is required (a commit to compare with), unless --table is given")
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import keras

    results = measure(args.base, args.steps, args.warmup, args.spread)
    total = {version: sum(row[f"{version}_ms"] for row in results.values()) for version in ("base", "now")}
    print(f"all kernels: base {total['base']:.2f} ms, now {total['now']:.2f} ms ({keras.backend.backend()})")
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(
                {"base": args.base, "backend": keras.backend.backend(), "spread": args.spread, "kernels": results},
                handle,
                indent=1,
            )


if __name__ == "__main__":
    main()
