"""Plot the output of `train_step.py --json`: time per batch of each figure, plain vs Lipschitz.

One panel per workload in the file; for each figure (training step, inference, inference
with the training flag, exported inference) a bar for the plain Keras model and one for
the deel-lip-ext model, labelled with the Lipschitz / plain ratio measured in the same
run. The machine's load during the run (`cpu_util`, process CPU seconds per wall second)
is printed in the title: on a loaded machine the absolute times are inflated, and only
the ratios compare.

    PYTHONPATH=. python benchmarks/train_step.py --workloads W1 W2 --json train_step.json
    python benchmarks/plot_train_step.py train_step.json docs/img/benchmark_train_step.png --table

`--table` also prints the same figures as a markdown table (the one under the figure on the
docs' benchmarks page), so that the page's figure and table come from one results file.
"""

import argparse
import json
import pathlib

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

# (key in a result row, bar label, key of the plain row the ratio divides by)
FIGURES = (
    ("train_step_ms", "training step", "train_step_ms"),
    ("infer_ms", "inference", "infer_ms"),
    ("infer_trainflag_ms", "forward, training=True", "infer_trainflag_ms"),
    ("infer_export_ms", "exported inference", "infer_ms"),
)
DPI = 150


def load_rows(path):
    """(meta, {workload: {variant: row}}) from a `train_step.py --json` file (error rows dropped)."""
    data = json.loads(pathlib.Path(path).read_text())
    rows = {}
    for row in data["results"]:
        if "error" not in row:
            rows.setdefault(row["workload"], {})[row["variant"]] = row
    return data["meta"], rows


def bars(rows):
    """[(label, plain ms, Lipschitz ms)] for every figure both variants measured; the exported
    model's inference is compared with the plain model's inference."""
    plain, lip = rows.get("plain", {}), rows.get("lip", {})
    return [
        (label, plain[plain_key], lip[key]) for key, label, plain_key in FIGURES if key in lip and plain_key in plain
    ]


def plot(meta, rows, path):
    workloads = sorted(rows)
    fig, axes = plt.subplots(1, len(workloads), figsize=(6.2 * len(workloads), 4.4), squeeze=False)
    for ax, workload in zip(axes[0], workloads):
        entries = bars(rows[workload])
        positions = range(len(entries))
        width = 0.38
        plain_heights = [plain for _, plain, _ in entries]
        lip_heights = [lip for _, _, lip in entries]
        ax.bar([p - width / 2 for p in positions], plain_heights, width, label="plain Keras", color="0.6")
        ax.bar([p + width / 2 for p in positions], lip_heights, width, label="deel-lip-ext", color="C0")
        for position, (_, plain, lip) in zip(positions, entries):
            ax.annotate(f"{lip / plain:.2f}x", (position + width / 2, lip), ha="center", va="bottom", fontsize=8)
        ax.set_xticks(list(positions))
        ax.set_xticklabels([label for label, *_ in entries], rotation=15, ha="right", fontsize=8)
        ax.set_ylabel("time per batch of 256 (ms, median)")
        utilisation = ", ".join(
            f"{variant} {row['cpu_util']:.2f}" for variant, row in sorted(rows[workload].items()) if "cpu_util" in row
        )
        ax.set_title(f"{workload}: ratio to plain above each bar\n(cpu_util: {utilisation})", fontsize=9)
        ax.grid(axis="y", alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(
        f"Lipschitz vs plain Keras, {meta.get('date', '')[:10]}\n{meta.get('machine', '')}\n"
        f"Keras {meta.get('keras')}, {_framework(meta)}, both variants alternated in one process\n"
        "exported inference is compared with the plain model's inference",
        fontsize=9,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=DPI)
    plt.close(fig)
    return path


def _framework(meta):
    """'tensorflow 2.21.0' (files written before the backend was recorded were TensorFlow's), with 'oneDNN on'
    or 'oneDNN off' where the file says which kernels TensorFlow ran."""
    backend = meta.get("backend", "tensorflow")
    kernels = "" if "onednn" not in meta else f" (oneDNN {'on' if meta['onednn'] else 'off'})"
    return f"{backend} {meta.get(backend)}{kernels}"


def markdown_table(rows):
    """The figures of `bars` as a markdown table: one line per (workload, figure), ms and ratio."""
    lines = ["| workload | figure | plain Keras ms | deel-lip-ext ms | ratio |", "|---|---|---|---|---|"]
    for workload in sorted(rows):
        for label, plain, lip in bars(rows[workload]):
            lines.append(f"| {workload} | {label} | {plain:.1f} | {lip:.1f} | {lip / plain:.2f}x |")
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("json_path", help="file written by train_step.py --json")
    parser.add_argument("png_path", help="figure to write (PNG, 150 dpi)")
    parser.add_argument("--table", action="store_true", help="also print the figures as a markdown table")
    args = parser.parse_args(argv)
    meta, rows = load_rows(args.json_path)
    if not rows:
        parser.error(f"{args.json_path} holds no successful row")
    print(plot(meta, rows, args.png_path))
    if args.table:
        print(markdown_table(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
