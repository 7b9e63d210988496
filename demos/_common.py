"""Helpers shared by the demos: command line, data folder, timing, tables, figures, attacks.

Every demo takes the same flags:

    --epochs N        training epochs (each demo has its own default, and a smaller one with --quick;
                      the demos that train to a wall-clock budget take seconds instead)
    --data-dir DIR    folder holding <dataset>.npz, searched first; then $DEEL_LIP_EXT_DATA,
                      ../shared/data beside the repository, Keras's cache (~/.keras/datasets)
                      and the tensorflow-datasets cache (see `deel_lip_ext.datasets`)
    --download        download the dataset when it is found nowhere (needs internet)
    --output-dir DIR  where plots, tables and exported models go (default: outputs/<demo>)
    --quick           a tiny budget (about a minute on 2 CPU cores), for CI
    --seed N          seed of keras, numpy and python

prints its expected run time before it starts, shows its progress, prints a table of the
time of each phase, and writes everything (`results.json`, what the tests read, plots at
150 dpi, exports) in its output folder and nowhere else. Without data it prints the places
searched and the flags that fix it, and exits with status 1 (no traceback).
"""

import argparse
import contextlib
import json
import math
import os
import pathlib
import sys
import time
import types

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
# numpy's small batched SVDs and FFTs (exact layer norms, SVCM projections) run up to 20
# times faster single-threaded than through OpenBLAS's thread pool; TensorFlow keeps its
# own threads. Set before numpy is imported.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

REPOSITORY_ROOT = pathlib.Path(__file__).resolve().parents[1]
# The demos run from a checkout without installing the package too.
if str(REPOSITORY_ROOT) not in sys.path:
    sys.path.insert(0, str(REPOSITORY_ROOT))

import keras  # noqa: E402
import numpy as np  # noqa: E402

from deel_lip_ext import attacks, certification, datasets  # noqa: E402
from deel_lip_ext.layers import InvertibleDownSampling, MaxMinHalves, SpectralConv2D, SpectralDense  # noqa: E402
from deel_lip_ext.losses import MultiMargin  # noqa: E402
from deel_lip_ext.model import Sequential  # noqa: E402
from deel_lip_ext.zoo import kw_small  # noqa: E402
from deel_lip_ext.zoo.bcop import CONVOLUTIONS as ZOO_CONVOLUTIONS  # noqa: E402

RESULTS_FILE = "results.json"
FIGURE_DPI = 150


def positive_int(text):
    """argparse type: an integer >= 1."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be an integer >= 1, got {text!r}")
    return value


def default_budget_name(args):
    """ "quick" with --quick, else "full" (the default run)."""
    return "quick" if args.quick else "full"


def expected_time(cpu_minutes):
    """The run-time estimate printed before a demo starts, from its measured CPU minutes."""
    cores = os.cpu_count() or 1
    idle_wall = round(max(cpu_minutes / cores, 0.5), 1)
    return (
        f"about {cpu_minutes:g} min of CPU time: {idle_wall:g} to {cpu_minutes:g} min of wall clock on "
        f"this idle {cores}-core machine, several times more when other jobs share it"
    )


def parse_demo_arguments(
    demo_name, description, budgets, argv=None, add_arguments=None, budget_name=default_budget_name, run_size=None
):
    """Parse the common demo flags, print the run's expected time, return the flags and budget.

    Args:
        demo_name: the demo's file stem; the default output folder is outputs/<demo_name>.
        description: the demo's docstring (shown by --help).
        budgets: {"full": {...}, "quick": {...}, ...}, each with at least "epochs" and
            "cpu_minutes" (the measured CPU time of that run, printed as the estimate).
        argv: arguments (None: sys.argv).
        add_arguments: optional function adding demo-specific flags to the parser.
        budget_name: function of the parsed flags naming the budget to use.
        run_size: function (flags, budget dict) -> the run's size as printed (default "N epochs"); it
            may rescale the dict's "cpu_minutes" to the flags. Budgets without "epochs" (training to
            a time budget) get no --epochs flag.

    Returns:
        The argparse namespace with `budget` (a namespace of the chosen budget, "epochs"
        replaced by --epochs when given), `output_dir` (created) and `demo_name`.
        The random seeds are set.
    """
    parser = argparse.ArgumentParser(
        prog=f"demos/{demo_name}.py", description=description, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    if "epochs" in budgets["full"]:
        parser.add_argument(
            "--epochs",
            type=positive_int,
            help=f"training epochs (default {budgets['full']['epochs']}; {budgets['quick']['epochs']} with --quick)",
        )
    parser.add_argument(
        "--data-dir",
        default=None,
        help="folder holding the dataset's .npz file, searched before $DEEL_LIP_EXT_DATA, ../shared/data, "
        "~/.keras/datasets and the tensorflow-datasets cache",
    )
    parser.add_argument(
        "--output-dir",
        type=pathlib.Path,
        default=pathlib.Path("outputs") / demo_name,
        help="folder for plots, tables and exports (default: %(default)s)",
    )
    parser.add_argument("--quick", action="store_true", help="tiny budget (about a minute on 2 CPU cores), for CI")
    parser.add_argument(
        "--download",
        action="store_true",
        help="download the data (tensorflow-datasets, else keras.datasets) when no local copy is found "
        "(needs internet)",
    )
    parser.add_argument("--seed", type=int, default=0, help="random seed (default: %(default)s)")
    if add_arguments is not None:
        add_arguments(parser)
    args = parser.parse_args(argv)
    name = budget_name(args)
    budget = dict(budgets[name])
    if getattr(args, "epochs", None) is not None:
        if "cpu_minutes" in budget:  # the estimate scales with the number of epochs
            budget["cpu_minutes"] = budget["cpu_minutes"] * args.epochs / budget["epochs"]
        budget["epochs"] = args.epochs
    args.budget = types.SimpleNamespace(**budget)
    args.demo_name = demo_name
    # The flag, else the environment variable; the library searches the other places itself.
    args.data_dir = args.data_dir or os.environ.get(datasets.ENV_VAR) or None
    args.output_dir.mkdir(parents=True, exist_ok=True)
    keras.utils.set_random_seed(args.seed)
    size = run_size(args, budget) if run_size else f"{budget['epochs']} epoch{'s' if budget['epochs'] != 1 else ''}"
    estimate = expected_time(round(budget["cpu_minutes"], 1)) if "cpu_minutes" in budget else "not measured"
    print(
        f"demos/{demo_name}.py, {'the default' if name == 'full' else name} run "
        f"({size}): "
        f"expected time {estimate}. Outputs go to {args.output_dir}/.",
        flush=True,
    )
    return args


def load_dataset(args, name, **kwargs):
    """`deel_lip_ext.datasets.load_numpy(name, args.data_dir, download=args.download, **kwargs)`.

    When the data is not found, its download fails or its file is unreadable (any
    `datasets.DatasetError`), exits with status 1 and one message (no traceback) naming
    every place searched and the flags that fix it.
    """
    try:
        return datasets.load_numpy(name, args.data_dir, download=args.download, **kwargs)
    except datasets.DatasetNotFoundError as error:  # also DatasetDownloadError
        command = f"python demos/{args.demo_name}.py" + (" --quick" if args.quick else "")
        raise SystemExit(f"\n{error.explain(command)}") from None
    except datasets.DatasetError as error:
        raise SystemExit(f"\n{error}") from None


def save_figure(fig, path):
    """Save a matplotlib figure at `FIGURE_DPI` (150) and close it; returns the path."""
    fig.savefig(path, dpi=FIGURE_DPI)
    pyplot().close(fig)
    return path


class PhaseTimer:
    """Wall-clock and CPU seconds of the named phases of a demo.

    CPU seconds (all threads of the process) are reported beside wall seconds because a
    busy shared machine inflates wall time but not CPU time; on an idle n-core machine
    wall time is at least CPU time / n.

    Examples:
        >>> timer = PhaseTimer()
        >>> with timer.phase("training"):
        ...     model.fit(...)
        >>> print_table(["phase", "wall s", "CPU s"], timer.rows())
    """

    def __init__(self):
        self.phases = []
        self._start_wall = time.perf_counter()
        self._start_cpu = time.process_time()

    @contextlib.contextmanager
    def phase(self, name):
        wall, cpu = time.perf_counter(), time.process_time()
        try:
            yield
        finally:
            self.phases.append((name, time.perf_counter() - wall, time.process_time() - cpu))

    def total(self):
        """(wall, cpu) seconds since the timer was created."""
        return time.perf_counter() - self._start_wall, time.process_time() - self._start_cpu

    def rows(self):
        """Table rows (phase, wall s, CPU s), with a final "total" row."""
        rows = [(name, f"{wall:.1f}", f"{cpu:.1f}") for name, wall, cpu in self.phases]
        wall, cpu = self.total()
        return rows + [("total", f"{wall:.1f}", f"{cpu:.1f}")]

    def as_dict(self):
        wall, cpu = self.total()
        phases = {name: {"wall_s": round(w, 2), "cpu_s": round(c, 2)} for name, w, c in self.phases}
        return {"phases": phases, "total": {"wall_s": round(wall, 2), "cpu_s": round(cpu, 2)}}


def format_table(headers, rows, title=None):
    """A Markdown (pipe) table as a string: readable in a terminal, pastable into the docs."""
    cells = [[str(h) for h in headers]] + [[str(c) for c in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]

    def line(row):
        return "| " + " | ".join(cell.ljust(width) for cell, width in zip(row, widths)) + " |"

    lines = [f"\n{title}\n"] if title else []
    lines += [line(cells[0]), "| " + " | ".join("-" * width for width in widths) + " |"]
    lines += [line(row) for row in cells[1:]]
    return "\n".join(lines)


def print_table(headers, rows, title=None):
    """Print `format_table(headers, rows, title)` and return it."""
    table = format_table(headers, rows, title)
    print(table, flush=True)
    return table


def percent(value):
    return f"{100 * value:.2f}"


def write_results(output_dir, results):
    """Write `results` (plain Python values) to output_dir/results.json and return the path."""
    path = pathlib.Path(output_dir) / RESULTS_FILE
    path.write_text(json.dumps(results, indent=2, default=_json_default) + "\n")
    return path


def _json_default(value):
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, pathlib.Path):
        return str(value)
    raise TypeError(f"cannot write {type(value).__name__} to JSON")


def pyplot():
    """matplotlib.pyplot on the file-only Agg backend (demos run headless in CI)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_image_grid(path, rows, row_labels, captions, title=None, signed_rows=None):
    """Save a grid of images: one row per entry of `rows`, one column per sample.

    Args:
        path: PNG file to write.
        rows: list of arrays (n, H, W) or (n, H, W, 1), all with the same n.
        row_labels: one label per row (shown on the left).
        captions: list (per row) of lists (per sample) of short strings.
        title: figure title.
        signed_rows: dict row index -> colour-bar label, for rows of signed values (a
            perturbation x' - x): drawn with a diverging colour map symmetric around 0 and a
            colour bar. The other rows are grey images in [0, 1].
    """
    plt = pyplot()
    signed_rows = signed_rows or {}
    n_rows, n_cols = len(rows), len(rows[0])
    width = 1.6 * n_cols + (2.0 if signed_rows else 0.6)
    fig, axes = plt.subplots(n_rows, n_cols, figsize=(width, 1.9 * n_rows), squeeze=False, layout="constrained")
    for r, (images, label) in enumerate(zip(rows, row_labels)):
        if r in signed_rows:
            limit = float(np.max(np.abs(images))) or 1.0
            style = {"cmap": "RdBu_r", "vmin": -limit, "vmax": limit}
        else:
            style = {"cmap": "gray", "vmin": 0.0, "vmax": 1.0}
        for c in range(n_cols):
            ax = axes[r][c]
            image = ax.imshow(np.squeeze(images[c]), **style)
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_title(captions[r][c], fontsize=8)
        axes[r][0].set_ylabel(label, fontsize=9)
        if r in signed_rows:
            colorbar = fig.colorbar(image, ax=list(axes[r]), shrink=0.9, pad=0.02)
            colorbar.set_label(signed_rows[r], fontsize=8)
            colorbar.ax.tick_params(labelsize=7)
    if title:
        fig.suptitle(title, fontsize=10)
    return save_figure(fig, path)


def misclassified(model, x, y, batch_size=512):
    """Boolean array: the model's logit margin on (x, y) is <= 0 (ties count as errors)."""
    margins = []
    for start in range(0, len(x), batch_size):
        logits = model(x[start : start + batch_size], training=False)
        margins.append(keras.ops.convert_to_numpy(certification.logit_margin(y[start : start + batch_size], logits)))
    return np.concatenate(margins) <= 0


def nearest_adversarial_examples(model, x, y, epsilons, steps=50, restarts=1, seed=0):
    """The closest misclassified point PGD finds for each sample, over increasing L2 budgets.

    For each budget of `epsilons` (ascending), samples not yet fooled are attacked by
    `deel_lip_ext.attacks.pgd` (L2, margin loss, random start); a sample keeps the first
    successful adversarial example. Its distance is an *upper* bound of the sample's true
    distance to the decision boundary, so it can never be below a valid certified radius.

    Args:
        model: classifier returning logits (N, C); C == 1 is a binary model.
        x: inputs in [0, 1]; y: labels as `pgd` takes them.
        epsilons: increasing L2 budgets.
        steps, restarts, seed: PGD settings.

    Returns:
        `(x_adv, distances)`: adversarial inputs (x itself where nothing was found) and
        their L2 distances to x (0 for misclassified points, inf where nothing was found).
    """
    x = np.asarray(x, dtype="float32")
    y = np.asarray(y)
    x_adv = x.copy()
    distances = np.full(len(x), np.inf)
    distances[misclassified(model, x, y)] = 0.0
    for eps in sorted(float(e) for e in epsilons):
        todo = np.flatnonzero(np.isinf(distances))
        if todo.size == 0:
            break
        # Padded to all samples (copies of the last one): one input shape, so JAX compiles PGD once
        # rather than once per number of samples left.
        rows = np.concatenate([todo, np.full(len(x) - todo.size, todo[-1])])
        candidates = attacks.pgd(
            model, x[rows], y[rows], eps, norm="l2", steps=steps, loss="cw", restarts=restarts, seed=seed
        )[: todo.size]
        fooled = misclassified(model, candidates, y[todo])
        found = todo[fooled]
        x_adv[found] = candidates[fooled]
        distances[found] = np.sqrt(np.sum((candidates[fooled] - x[found]) ** 2, axis=tuple(range(1, x.ndim))))
    return x_adv, distances


def geometric_budgets(low, high, count):
    """`count` L2 budgets from `low` to `high`, evenly spaced in log scale."""
    return list(np.exp(np.linspace(math.log(low), math.log(high), count)))


# ----------------------------------------------------------------------------- models

# The BCOP paper's convolutions (deel_lip_ext.zoo) and the library's SpectralConv2D.
CONVOLUTIONS = ("bcop", "spectral", "rko", "ossn", "svcm")
NETWORK_SIZES = ("small", "wide")
_WIDTHS = {"small": (16, 32, 100), "wide": (32, 64, 128)}


def _convolution_class(conv):
    if conv == "spectral":
        return SpectralConv2D
    if conv not in ZOO_CONVOLUTIONS:
        raise ValueError(f"conv must be one of {CONVOLUTIONS}, got {conv!r}.")
    return ZOO_CONVOLUTIONS[conv]


def build_network(conv="bcop", size="small", input_shape=(28, 28, 1), num_classes=10):
    """Wong et al.'s "Small" network as the BCOP paper runs it, or a wider variant.

    Both are two (invertible downsampling by 2 + 2 x 2 circular convolution + MaxMinHalves)
    blocks, flatten, a dense layer + MaxMinHalves, and a dense output layer.

    * size "small": 16 and 32 channels, dense 100. For "bcop", "rko", "ossn" and "svcm"
      it is `deel_lip_ext.zoo.kw_small` (Björck dense layers, 20 fixed iterations).
      For "spectral", `SpectralConv2D` (reshaped kernel orthonormalized and divided by
      2, the exact correction of a circular 2 x 2 convolution) and `SpectralDense`.
    * size "wide": 32 and 64 channels, dense 128, with `SpectralDense` layers whose
      adaptive Björck stopping keeps the 3136 x 128 layer affordable on a CPU.

    Args:
        conv: one of `CONVOLUTIONS`.
        size: "small" or "wide".
        input_shape: (height, width, channels), height and width divisible by 4.
        num_classes: number of outputs.
    """
    conv_class = _convolution_class(conv)
    if size not in _WIDTHS:
        raise ValueError(f"size must be one of {NETWORK_SIZES}, got {size!r}.")
    if size == "small" and conv != "spectral":
        return kw_small(conv, input_shape, num_classes)
    first, second, dense = _WIDTHS[size]
    return Sequential(
        [
            keras.Input(input_shape),
            InvertibleDownSampling(2, name="downsampling1"),
            conv_class(first, 2, padding="circular", name="conv1"),
            MaxMinHalves(name="act1"),
            InvertibleDownSampling(2, name="downsampling2"),
            conv_class(second, 2, padding="circular", name="conv2"),
            MaxMinHalves(name="act2"),
            keras.layers.Flatten(name="flatten"),
            SpectralDense(dense, name="dense1"),
            MaxMinHalves(name="dense_act1"),
            SpectralDense(num_classes, name="logits"),
        ],
        name=f"kw_{size}_{conv}",
    )


# ----------------------------------------------------------------------------- training

# The BCOP paper's MNIST protocol (LConvNet's adv-rob-mnist config): multi-class hinge
# with margin sqrt(2) * eps_train * L for eps_train = 1.5 and L = 1, Adam 1e-3, batch 128,
# inputs in [0, 1] without normalization, learning rate divided by 10 every 60 epochs
# (smoothly, per epoch); runs shorter than 60 epochs compress that schedule to their length.
PAPER_TRAINING_MARGIN = math.sqrt(2.0) * 1.5
PAPER_LEARNING_RATE = 1e-3
PAPER_LR_DECADE_EPOCHS = 60
PAPER_BATCH_SIZE = 128


def paper_learning_rate(epochs):
    """Learning rate per epoch: 1e-3 divided by 10 every min(60, epochs) epochs."""
    decay = 0.1 ** (1.0 / min(PAPER_LR_DECADE_EPOCHS, epochs))
    return lambda epoch, lr=None: PAPER_LEARNING_RATE * decay**epoch


def fit_verbosity():
    """A progress bar in a terminal, one line per epoch in logs and subprocesses."""
    return 1 if sys.stdout.isatty() else 2


class FirstEpochProgress(keras.callbacks.Callback):
    """Print a line at every tenth of the first epoch (logs only get one line per epoch otherwise).

    `fit(verbose=2)` (logs, subprocesses) is silent until the first epoch ends, a minute or
    more in the default runs; these lines show the run is alive and how fast it goes.
    """

    def __init__(self, fraction=0.1):
        super().__init__()
        self.fraction = fraction

    def on_train_begin(self, logs=None):
        self.steps = self.params.get("steps")
        self.start = time.perf_counter()

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        if self.epoch > 0 or not self.steps:
            return
        done = batch + 1
        if done < self.steps and done % max(1, round(self.steps * self.fraction)) == 0:
            loss = f", loss {float(logs['loss']):.4f}" if logs and "loss" in logs else ""
            elapsed = time.perf_counter() - self.start
            print(f"  epoch 1/{self.params['epochs']}: batch {done}/{self.steps}, {elapsed:.0f} s{loss}", flush=True)


def progress_callbacks():
    """`FirstEpochProgress` when `fit` prints one line per epoch (not a terminal), else nothing."""
    return [] if fit_verbosity() == 1 else [FirstEpochProgress()]


def fit_paper_protocol(model, x_train, y_train, epochs, metrics=(), callbacks=(), num_classes=10):
    """Compile and train `model` with the BCOP paper's protocol (see the constants above)."""
    model.compile(
        optimizer=keras.optimizers.Adam(PAPER_LEARNING_RATE),
        loss=MultiMargin(min_margin=PAPER_TRAINING_MARGIN),
        metrics=["accuracy", *metrics],
    )
    return model.fit(
        x_train,
        keras.utils.to_categorical(y_train, num_classes),
        batch_size=PAPER_BATCH_SIZE,
        epochs=epochs,
        callbacks=[
            keras.callbacks.LearningRateScheduler(paper_learning_rate(epochs)),
            *progress_callbacks(),
            *callbacks,
        ],
        verbose=fit_verbosity(),
    )
