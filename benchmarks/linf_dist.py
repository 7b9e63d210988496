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

Usage:
    PYTHONPATH=. python benchmarks/linf_dist.py                   # 784 -> 5120 and 784 -> 512, batch 512
    PYTHONPATH=. python benchmarks/linf_dist.py --shapes 784x5120 --repeats 5 --no-jit
"""

import argparse
import json
import os
import subprocess
import sys
import time

# Bytes of float32 (batch, inputs, units) intermediates the naive p = 8 autodiff keeps alive at once.
_NAIVE_LIVE_INTERMEDIATES = {"8": 4, "inf": 2}


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


def _naive_need_gb(batch, inputs, units, p):
    live = _NAIVE_LIVE_INTERMEDIATES["inf" if p == "inf" else "8"]
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
    print(f"{'shape':>10} {'p':>4} {'impl':>8} {'time (s)':>9} {'cpu (s)':>8} {'peak (MB)':>10} {'output (MB)':>12}")
    for shape in args.shapes.split(","):
        inputs, units = (int(v) for v in shape.lower().split("x"))
        output_mb = args.batch * units * 4 / 2**20
        for p in args.p.split(","):
            for impl in ("chunked", "naive"):
                if impl == "naive" and _naive_need_gb(args.batch, inputs, units, p) > args.memory_limit_gb:
                    need = _naive_need_gb(args.batch, inputs, units, p)
                    print(f"{shape:>10} {p:>4} {impl:>8}  skipped: needs ~{need:.0f} GB > --memory-limit-gb")
                    continue
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
                    print(f"{shape:>10} {p:>4} {impl:>8}  failed (exit {run.returncode}): {run.stderr.strip()[-200:]}")
                    continue
                result = json.loads(lines[-1])
                print(
                    f"{shape:>10} {p:>4} {impl:>8} {result['time_s']:>9.3f} {result['cpu_s']:>8.2f} "
                    f"{result['peak_mb']:>10.0f} {output_mb:>12.1f}"
                )


if __name__ == "__main__":
    main()
