"""Compare the families of 1-Lipschitz layers: the same network, the same wall-clock budget each.

For each family (spectral/Björck, BCOP, AOL, AOC, SLL, CPL, a LiResNet-style network;
demos/_families.py builds them all from one skeleton, widths and depth) and each dataset
(MNIST at L2 eps 0.5 / 1.0 / 1.58; the bundled 20k CIFAR-10 subset at 36/255, 72/255,
108/255), a model is trained for --budget-seconds of wall clock (Adam, learning rate
warmed up then cosine-decayed to 0 over the budget, batch 128, multi-class hinge with
margin sqrt(2) eps_train: eps_train = 1.5 on MNIST (the BCOP paper's), 72/255 on CIFAR),
then:

1. certified: clean and certified accuracy on the test set with the model's Lipschitz bound
   *computed* from its layers (`deel_lip_ext.certification.certify`: product of exact or
   provably upper-bounded layer norms), never a power-iteration estimate;
2. attacked: PGD at every eps on the first test points; no certificate may be broken;
3. exported: `vanilla_export()` (plain Keras), its logits compared with the model's, its
   inference images/s measured (best of 3 passes over the test images, batch 256);
4. the training images/s and the peak resident memory during training are recorded, and the
   certified accuracy at the middle eps on the first test images is measured at a quarter,
   half, three quarters and the end of the budget (evaluation time does not count).

Everything runs in one process, one family after the other, so a busy machine slows
families unequally: compare figures of one run on an idle machine.

Usage:
    python demos/layer_comparison.py                       # default: 120 s per model, about 40 min
    python demos/layer_comparison.py --quick               # a few minutes, for CI
    python demos/layer_comparison.py --datasets mnist --families aol sll --budget-seconds 300

Outputs (in --output-dir, default outputs/layer_comparison): layer_comparison.md (the tables),
results.json, certified_vs_eps.png, pareto.png.
"""

import math
import sys
import warnings

from _budget import TimeBudget, fit_for, inference_images_per_second, one_hot
from _common import (
    PhaseTimer,
    format_table,
    load_dataset,
    parse_demo_arguments,
    percent,
    pyplot,
    save_figure,
    write_results,
)
from _families import FAMILIES, FAMILY_LABELS, build_family_network

import keras  # noqa: E402
import numpy as np  # noqa: E402

from deel_lip_ext.attacks import verify_certificates  # noqa: E402
from deel_lip_ext.certification import certify  # noqa: E402
from deel_lip_ext.losses import MultiMargin  # noqa: E402

DATASETS = {
    "mnist": {"epsilons": (0.5, 1.0, 1.58), "eps_labels": ("0.5", "1.0", "1.58"), "train_eps": 1.5},
    "cifar10": {
        "epsilons": (36 / 255, 72 / 255, 108 / 255),
        "eps_labels": ("36/255", "72/255", "108/255"),
        "train_eps": 72 / 255,
    },
}
LEARNING_RATE = 1e-3
BATCH_SIZE = 128
EXPORT_TOLERANCE = 1e-4
TABLE_FILE = "layer_comparison.md"
FIGURES = ("certified_vs_eps.png", "pareto.png")

BUDGETS = {
    "full": {
        "budget_seconds": 120,
        "width": 16,
        "num_train": None,
        "num_test": None,
        "num_curve": 1000,
        "checkpoints": (0.25, 0.5, 0.75),
        "num_verified": 200,
        "attack_steps": 50,
        # 14 models x (2 cores x 120 s of training + certification, curve, attack, export:
        # about 60 s of CPU each, an estimate not yet measured on a default run).
        "cpu_minutes": 70,
        "evaluation_cpu_seconds": 60,
    },
    "quick": {
        "budget_seconds": 2,
        "width": 8,
        "num_train": 2000,
        "num_test": 200,
        "num_curve": 100,
        "checkpoints": (0.5,),
        "num_verified": 40,
        "attack_steps": 10,
        "cpu_minutes": 4,  # measured: 207 s of CPU time
        "evaluation_cpu_seconds": 11,
    },
}


def add_arguments(parser):
    parser.add_argument(
        "--budget-seconds",
        type=float,
        default=None,
        help="wall-clock training seconds per model (default 120; 2 with --quick)",
    )
    parser.add_argument(
        "--datasets", nargs="+", choices=tuple(DATASETS), default=list(DATASETS), help="datasets (default: both)"
    )
    parser.add_argument(
        "--families", nargs="+", choices=FAMILIES, default=list(FAMILIES), help="layer families (default: all)"
    )


def run_size(args, budget):
    """ "M models x N s of training"; the CPU-time estimate: per model, 2 busy cores for N s plus its evaluation."""
    seconds = args.budget_seconds or budget["budget_seconds"]
    models = len(args.datasets) * len(args.families)
    budget["cpu_minutes"] = models * (2 * seconds + budget["evaluation_cpu_seconds"]) / 60
    return f"{models} models x {seconds:g} s of training"


def certified_at(epsilon, x, y):
    """A function of a model: its certified accuracy at `epsilon` on (x, y), with its computed bound."""
    return lambda model: certify(model, (x, y), [epsilon], verbose=False).certified_accuracy[0]


def train(model, data, spec, budget, seconds, label):
    """Train under the time budget; returns the `TimeBudget` callback (its figures and curve)."""
    x_train, y_train, x_test, y_test = data
    n = budget.num_curve
    model.compile(
        optimizer=keras.optimizers.Adam(LEARNING_RATE),
        loss=MultiMargin(min_margin=math.sqrt(2.0) * spec["train_eps"]),
        metrics=["accuracy"],
    )
    clock = TimeBudget(
        seconds,
        peak_learning_rate=LEARNING_RATE,
        batch_size=BATCH_SIZE,
        every=30.0,
        label=label,
        checkpoints=budget.checkpoints,
        evaluate=certified_at(spec["epsilons"][1], x_test[:n], y_test[:n]),
    )
    fit_for(model, x_train, one_hot(y_train), clock, BATCH_SIZE)
    return clock


def pgd_check(model, x, y, epsilons, lip_const, steps):
    """verify_certificates at every eps: the number of certificates PGD broke (must be 0) and those tested."""
    checks = [
        verify_certificates(model, x, y, eps, lip_const=lip_const, steps=steps, restarts=1, verbose=False)
        for eps in epsilons
    ]
    return sum(c.n_broken for c in checks), sum(c.n_certified for c in checks)


def evaluate_family(family, data, spec, budget, seconds, label):
    """Train, certify, attack and export one family; returns its results.json entry."""
    x_train, y_train, x_test, y_test = data
    with warnings.catch_warnings():
        # LiResNetBlock is not 1-Lipschitz by construction; certify uses its exact norm.
        warnings.filterwarnings("ignore", message=".*is not known to be 1-Lipschitz.*")
        model = build_family_network(family, x_train.shape[1:], width=budget.width)
    clock = train(model, data, spec, budget, seconds, label)
    result = certify(model, (x_test, y_test), spec["epsilons"], verbose=False)
    n = min(budget.num_verified, len(x_test))
    broken, attacked = pgd_check(model, x_test[:n], y_test[:n], spec["epsilons"], result.lip_const, budget.attack_steps)
    plain = model.vanilla_export()
    x_check = x_test[:256]
    export_diff = float(
        np.max(np.abs(keras.ops.convert_to_numpy(plain(x_check)) - keras.ops.convert_to_numpy(model(x_check))))
    )
    return {
        "label": FAMILY_LABELS[family],
        "parameters": int(model.count_params()),
        "clean_accuracy": float(result.clean_accuracy),
        "certified_accuracy": [float(a) for a in result.certified_accuracy],
        "lip_const": float(result.lip_const),
        "lip_const_source": result.lip_const_source,
        "train_seconds": clock.wall_seconds,
        "first_step_seconds": clock.first_step_seconds,
        "epochs": clock.epochs,
        "train_images_per_second": clock.images_per_second,
        "inference_images_per_second": inference_images_per_second(plain, x_test),
        "peak_resident_mib": clock.peak_resident_mib,
        "curve": clock.curve,
        "pgd_broken": broken,
        "pgd_certified_points_attacked": attacked,
        "export_max_abs_diff": export_diff,
    }


def table(spec, rows):
    """The markdown table of one dataset: a row per family."""
    headers = ["family", "clean %"] + [f"cert. % @ {label}" for label in spec["eps_labels"]]
    headers += ["bound L (computed)", "epochs", "train img/s", "export img/s", "peak RSS MiB", "PGD broken"]
    return headers, [
        [r["label"], percent(r["clean_accuracy"])]
        + [percent(a) for a in r["certified_accuracy"]]
        + [f"{r['lip_const']:.6f}", f"{r['epochs']:.2f}", f"{r['train_images_per_second']:.0f}"]
        + [f"{r['inference_images_per_second']:.0f}", f"{r['peak_resident_mib']:.0f}", r["pgd_broken"]]
        for r in rows.values()
    ]


def plot_certified_vs_eps(results, path):
    plt = pyplot()
    fig, axes = plt.subplots(1, len(results), figsize=(5.5 * len(results), 4.2), squeeze=False, layout="constrained")
    for ax, (name, entry) in zip(axes[0], results.items()):
        spec = DATASETS[name]
        for row in entry["families"].values():
            ax.plot(
                [0.0, *spec["epsilons"]], [row["clean_accuracy"], *row["certified_accuracy"]], "o-", label=row["label"]
            )
        ax.set_xticks([0.0, *spec["epsilons"]], ["0", *spec["eps_labels"]])
        ax.set(xlabel="L2 radius eps", ylabel="certified accuracy (eps = 0: clean)", title=name)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(f"Certified accuracy, {entry['budget_seconds']:g} s of training per model", fontsize=10)
    return save_figure(fig, path)


def plot_pareto(results, path):
    """Certified accuracy at the middle eps (first test images) against training seconds, per family."""
    plt = pyplot()
    fig, axes = plt.subplots(1, len(results), figsize=(5.5 * len(results), 4.2), squeeze=False, layout="constrained")
    for ax, (name, entry) in zip(axes[0], results.items()):
        points = []
        for row in entry["families"].values():
            seconds, accuracy = zip(*row["curve"])
            ax.plot(seconds, accuracy, "o-", label=row["label"])
            points += row["curve"]
        front, best = [], -1.0
        for seconds, accuracy in sorted(points):
            if accuracy > best:
                front.append((seconds, accuracy))
                best = accuracy
        front.append((max(seconds for seconds, _ in points), best))  # the front holds until the last point
        ax.step(*zip(*front), "k--", where="post", alpha=0.5, label="Pareto front")
        ax.set(
            xlabel="training wall-clock seconds",
            ylabel=f"certified accuracy at eps = {DATASETS[name]['eps_labels'][1]}",
            title=f"{name} (first {entry['num_curve']} test images)",
        )
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    return save_figure(fig, path)


def main(argv=None):
    args = parse_demo_arguments("layer_comparison", __doc__, BUDGETS, argv, add_arguments, run_size=run_size)
    budget, out = args.budget, args.output_dir
    seconds = args.budget_seconds or budget.budget_seconds
    timer, results, tables = PhaseTimer(), {}, []
    total, index = len(args.datasets) * len(args.families), 0
    for name in args.datasets:
        spec = DATASETS[name]
        data = load_dataset(args, name, num_train=budget.num_train, num_test=budget.num_test)
        print(f"{name}: {len(data[0])} training and {len(data[2])} test images", flush=True)
        rows = {}
        for family in args.families:
            index += 1
            label = f"[{index}/{total}] {name} {FAMILY_LABELS[family]}: "
            print(f"{label}training for {seconds:g} s", flush=True)
            with timer.phase(f"{name} {family}"):
                rows[family] = evaluate_family(family, data, spec, budget, seconds, label)
            row = rows[family]
            print(
                f"{label}clean {percent(row['clean_accuracy'])} %, certified "
                f"{' / '.join(percent(a) for a in row['certified_accuracy'])} % (L = {row['lip_const']:.6f}), "
                f"{row['epochs']:.2f} epochs, PGD broke {row['pgd_broken']}",
                flush=True,
            )
            keras.utils.clear_session()
        results[name] = {
            "epsilons": list(spec["epsilons"]),
            "budget_seconds": seconds,
            "num_curve": min(budget.num_curve, len(data[2])),
            "num_test": len(data[2]),
            "families": rows,
        }
        headers, lines = table(spec, rows)
        title = f"{name}: {len(data[2])} test images, {seconds:g} s of training per model"
        tables.append(format_table(headers, lines, title=title))
        print(tables[-1], flush=True)
    (out / TABLE_FILE).write_text("\n".join(tables) + "\n")
    plot_certified_vs_eps(results, out / FIGURES[0])
    plot_pareto(results, out / FIGURES[1])
    broken = sum(row["pgd_broken"] for entry in results.values() for row in entry["families"].values())
    exports = max(row["export_max_abs_diff"] for entry in results.values() for row in entry["families"].values())
    print(f"PGD check: {broken} certificates broken (must be 0); max |export - model| logits {exports:.3g}")
    print(format_table(["phase", "wall s", "CPU s"], timer.rows(), title="Time"), flush=True)
    write_results(
        out,
        {
            "budget_seconds": seconds,
            "width": budget.width,
            "results": results,
            "broken_certificates": broken,
            "export_max_abs_diff": exports,
            "time": timer.as_dict(),
            "files": [TABLE_FILE, *FIGURES],
        },
    )
    return 0 if broken == 0 and exports <= EXPORT_TOLERANCE else 1


if __name__ == "__main__":
    sys.exit(main())
