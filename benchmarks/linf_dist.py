"""Forward + backward time and peak memory of one l_inf-distance layer: chunked vs naive.

The chunked op (`deel_lip_ext.layers.linf.linf_distance`, custom gradient)
against the naive broadcast of a (batch, inputs, units) difference tensor
with plain autodiff (`naive_distance`), at p = 8 and p = inf. p is a
variable, as in a layer trained with `LpScheduler`. Each configuration runs
in its own process; its peak memory is the peak of TensorFlow's allocator during the
timed steps (statistics reset after a warm-up step) minus what was allocated
before them (inputs, weights), so it counts the step's intermediates and
outputs, not compilation.
"cpu" is the process CPU time of a step (robust to other load on the
machine; it adds up the threads). The naive
version is skipped where its estimated need exceeds the memory limit.
"floor" is the memory of what the step returns (output, input gradient,
kernel gradient): no implementation can peak below it. The allocator works in
regions of several MB (a 64 -> 32 layer "peaks" at 8-16 MB), so peaks of a few
tens of MB overstate the step's real need.

Usage:
    PYTHONPATH=. python benchmarks/linf_dist.py                   # 784 -> 5120 and 784 -> 512, batch 512
    PYTHONPATH=. python benchmarks/linf_dist.py --no-jit          # TensorFlow's graph runtime (Keras's CPU default)
    PYTHONPATH=. python benchmarks/linf_dist.py --shapes 784x5120,3072x5120 --memory-limit-gb 20
"""

import argparse
import json
import os
import subprocess
import sys
import time

# Float32 (batch, units, inputs) tensors the naive autodiff keeps alive at once, measured at 784 -> 512.
_NAIVE_LIVE_INTERMEDIATES = {(True, "8"): 2, (True, "inf"): 1, (False, "8"): 4, (False, "inf"): 3}


def worker(args):
    """Time one configuration in this process and print one JSON line."""
    import numpy as np
    import tensorflow as tf

    from deel_lip_ext.layers.linf import linf_distance, naive_distance

    rng = np.random.default_rng(0)
    x = tf.constant(rng.normal(size=(args.batch, args.inputs)).astype("float32") + 10.0)
    kernel = tf.Variable(rng.normal(size=(args.inputs, args.units)).astype("float32"))
    p = tf.Variable(float(args.p), trainable=False)
    upstream = tf.constant(rng.normal(size=(args.batch, args.units)).astype("float32"))

    @tf.function(jit_compile=args.jit)
    def step():
        with tf.GradientTape() as tape:
            tape.watch(x)
            if args.impl == "chunked":
                y = linf_distance(x, kernel, p, args.chunk_size)
            else:
                y = naive_distance(x, kernel, args.p)
            objective = tf.reduce_sum(y * upstream)
        return tape.gradient(objective, [x, kernel])

    [value.numpy() for value in step()]  # trace, compile, warm up
    tf.config.experimental.reset_memory_stats("CPU:0")
    before = tf.config.experimental.get_memory_info("CPU:0")["current"]
    times, cpu_times = [], []
    for _ in range(args.repeats):
        start, cpu_start = time.perf_counter(), time.process_time()
        [value.numpy() for value in step()]
        times.append(time.perf_counter() - start)
        cpu_times.append(time.process_time() - cpu_start)
    peak = tf.config.experimental.get_memory_info("CPU:0")["peak"]
    print(
        json.dumps(
            {
                "impl": args.impl,
                "p": args.p,
                "shape": f"{args.inputs}x{args.units}",
                "time_s": min(times),
                "cpu_s": min(cpu_times),
                "peak_mb": (peak - before) / 2**20,
            }
        )
    )


def _naive_need_gb(batch, inputs, units, p, jit):
    live = _NAIVE_LIVE_INTERMEDIATES[(jit, "inf" if p == "inf" else "8")]
    return live * batch * inputs * units * 4 / 1e9


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=512)
    parser.add_argument("--shapes", default="784x5120,784x512", help="comma-separated INPUTSxUNITS")
    parser.add_argument("--p", default="8,inf", help="comma-separated norm orders")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--chunk-size", type=int, default=None)
    parser.add_argument("--no-jit", dest="jit", action="store_false", help="plain tf.function instead of XLA")
    parser.add_argument("--memory-limit-gb", type=float, default=12.0, help="skip naive runs needing more")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--impl", default="chunked", help=argparse.SUPPRESS)
    parser.add_argument("--inputs", type=int, default=784, help=argparse.SUPPRESS)
    parser.add_argument("--units", type=int, default=5120, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        args.p = float(args.p)
        return worker(args)

    print(f"batch {args.batch}, {'XLA' if args.jit else 'tf.function'}, forward + backward, best of {args.repeats}")
    print("floor: what the step returns (output + input gradient + kernel gradient), float32")
    header = f"{'shape':>10} {'p':>4} {'impl':>8} {'time (s)':>9} {'cpu (s)':>8} {'peak (MB)':>10}"
    print(f"{header} {'output (MB)':>12} {'floor (MB)':>11} {'peak/floor':>11} {'time/naive':>11}")
    for shape in args.shapes.split(","):
        inputs, units = (int(v) for v in shape.lower().split("x"))
        output_mb = args.batch * units * 4 / 2**20
        floor_mb = output_mb + (args.batch * inputs + inputs * units) * 4 / 2**20
        for p in args.p.split(","):
            results = {}
            for impl in ("naive", "chunked"):
                need = _naive_need_gb(args.batch, inputs, units, p, args.jit)
                if impl == "naive" and need > args.memory_limit_gb:
                    print(f"{shape:>10} {p:>4} {impl:>8}  skipped: needs ~{need:.0f} GB > --memory-limit-gb")
                    continue
                result = _run_worker(args, impl, p, inputs, units)
                if result is None:
                    continue
                results[impl] = result
                versus_naive = result["time_s"] / results["naive"]["time_s"] if "naive" in results else None
                print(
                    f"{shape:>10} {p:>4} {impl:>8} {result['time_s']:>9.3f} {result['cpu_s']:>8.2f} "
                    f"{result['peak_mb']:>10.0f} {output_mb:>12.1f} {floor_mb:>11.1f} "
                    f"{result['peak_mb'] / floor_mb:>11.2f} {'' if versus_naive is None else f'{versus_naive:.2f}':>11}"
                )


def _run_worker(args, impl, p, inputs, units):
    """One configuration in a fresh process (so that its peak memory is its own); None if it failed."""
    command = [
        sys.executable, __file__, "--worker", "--impl", impl, "--p", p, "--batch", str(args.batch),
        "--inputs", str(inputs), "--units", str(units), "--repeats", str(args.repeats),
    ]  # fmt: skip
    if args.chunk_size:
        command += ["--chunk-size", str(args.chunk_size)]
    if not args.jit:
        command.append("--no-jit")
    # The BFC allocator keeps the statistics that get_memory_info reads on CPU.
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", TF_CPU_ALLOCATOR_USE_BFC="true")
    run = subprocess.run(command, capture_output=True, text=True, env=env)
    lines = [line for line in run.stdout.splitlines() if line.startswith("{")]
    if run.returncode != 0 or not lines:
        print(f"{inputs}x{units} {p:>4} {impl:>8}  failed (exit {run.returncode}): {run.stderr.strip()[-200:]}")
        return None
    return json.loads(lines[-1])


if __name__ == "__main__":
    main()
