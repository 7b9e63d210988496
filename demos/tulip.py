"""Adversarial training and Lipschitz regularization ("tulip") of an ordinary Keras model.

Trains the same small convolutional network four times with the objectives of Finlay,
Calder, Abbasi & Oberman (see `deel_lip_ext.regularization`):

- J0: plain cross-entropy;
- J1: FGSM adversarial training (one sign-gradient step of l2 length eps_train);
- J2: l2 adversarial training (one normalized-gradient step of length eps_train);
- J2-Lip: J2 plus lip_weight * max over the batch of ||grad_x loss||_2 (tulip),

then prints the talk's table (clean error, error at an l2 radius, median l2 adversarial
distance, estimated Lipschitz constant) and saves the error-vs-epsilon curves as a PNG.
Adversarial distances are the smallest perturbations found by a PGD battery (upper
bounds of the true distances); the Lipschitz column is an empirical estimate (max
Jacobian norm over test points), not a certificate.

Usage:
    python demos/tulip.py --quick                # about a minute on 2 CPU cores
    python demos/tulip.py                        # MNIST, about 3.5 min of CPU time
    python demos/tulip.py --dataset cifar10      # needs cifar10.npz or cifar10_jpeg_20k.npz

Outputs (in --output-dir, default outputs/tulip): tulip_<dataset>_error_vs_eps.png,
results.json.
"""

from _common import (
    PhaseTimer,
    fit_verbosity,
    load_dataset,
    parse_demo_arguments,
    print_table,
    pyplot,
    save_figure,
    write_results,
)

import keras  # noqa: E402
import numpy as np  # noqa: E402

from deel_lip_ext import regularization  # noqa: E402

# Per dataset: the training step length and the table's l2 radius (the talk used 0.1 on
# CIFAR-10; MNIST digits are much farther from their decision boundaries).
DATASET_SETTINGS = {
    "mnist": {"eps_train": 0.5, "eps_table": 1.0, "lip_weight": 0.1, "max_epsilon": 6.0},
    "cifar10": {"eps_train": 0.05, "eps_table": 0.1, "lip_weight": 0.1, "max_epsilon": 2.0},
}
BUDGETS = {
    "quick": {
        "num_train": 4000,
        "epochs": 2,
        "num_test": 100,
        "bisection_steps": 8,
        "attack_steps": 10,
        "cpu_minutes": 1,
    },
    # 204 s of CPU time on MNIST (docs/tutorials/tulip.md).
    "full": {
        "num_train": 20000,
        "epochs": 4,
        "num_test": 500,
        "bisection_steps": 10,
        "attack_steps": 20,
        "cpu_minutes": 3.5,
    },
}
METHODS = ("J0", "J1", "J2", "J2-Lip")

# The talk's CIFAR-10 rows (ResNeXt, 200 epochs), printed for comparison.
TALK_CIFAR10_ROWS = {
    "J0": (0.09, 53.98),
    "J1": (0.18, 24.63),
    "J2": (0.30, 13.54),
    "J2-Lip": (0.56, 12.12),
}


def add_arguments(parser):
    """The demo's own flags, besides the shared ones of `_common.parse_demo_arguments`."""
    parser.add_argument("--dataset", choices=tuple(DATASET_SETTINGS), default="mnist")
    parser.add_argument("--num-train", type=int, help="training images used")
    parser.add_argument("--num-test", type=int, help="test images attacked")
    parser.add_argument("--eps-train", type=float, help="l2 length of the J1/J2 training perturbation")
    parser.add_argument("--eps", type=float, help="l2 radius of the table's error column")
    parser.add_argument("--lip-weight", type=float, help="lambda of the J2-Lip Lipschitz term")


def build_model(input_shape, num_classes=10):
    """The small network every method trains (logits output)."""
    return keras.Sequential(
        [
            keras.Input(input_shape),
            keras.layers.Conv2D(16, 5, strides=2, padding="same", activation="relu"),
            keras.layers.Conv2D(32, 5, strides=2, padding="same", activation="relu"),
            keras.layers.Flatten(),
            keras.layers.Dense(100, activation="relu"),
            keras.layers.Dense(num_classes),
        ]
    )


def make_objective(method, eps_train, lip_weight):
    objectives = {
        "J0": lambda: regularization.PlainTraining(),
        "J1": lambda: regularization.FGSMTraining(epsilon=eps_train),
        "J2": lambda: regularization.L2AdversarialTraining(epsilon=eps_train),
        # The paper's formula (per-sample gradients), independent of the batch size.
        "J2-Lip": lambda: regularization.Tulip(epsilon=eps_train, lip_weight=lip_weight, penalty_scaling="sample"),
    }
    return objectives[method]()


def train(method, data, settings, budget, seed):
    x_train, y_train = data
    keras.utils.set_random_seed(seed)
    model = build_model(x_train.shape[1:])
    trainer = regularization.RobustTrainingModel(
        model, make_objective(method, settings["eps_train"], settings["lip_weight"])
    )
    trainer.compile(
        optimizer=keras.optimizers.Adam(1e-3),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    trainer.fit(x_train, y_train, epochs=budget["epochs"], batch_size=128, verbose=fit_verbosity())
    return model


def measure(model, x_test, y_test, settings, budget):
    distances = regularization.adversarial_distances(
        model,
        x_test,
        y_test,
        norm="l2",
        max_epsilon=settings["max_epsilon"],
        bisection_steps=budget["bisection_steps"],
        attack_steps=budget["attack_steps"],
    )
    return {
        "distances": distances,
        "clean_error": regularization.error_at_eps(model, x_test, y_test, 0.0),
        "error_at_eps": regularization.error_at_eps(
            model, x_test, y_test, settings["eps_table"], norm="l2", attack_steps=budget["attack_steps"]
        ),
        "median_distance": float(np.median(distances)),
        "lipschitz_estimate": regularization.lipschitz_estimate(model, x_test),
    }


def format_table(results, eps_table, dataset):
    lines = [
        f"{dataset}: l2 robustness of the same network under each objective",
        f"| method | clean error % | % error at l2 eps = {eps_table:g} | median l2 adv. distance "
        "| Lipschitz estimate (empirical, not a bound) |",
        "|---|---|---|---|---|",
    ]
    for method, row in results.items():
        lines.append(
            f"| {method} | {100 * row['clean_error']:.2f} | {100 * row['error_at_eps']:.2f} "
            f"| {row['median_distance']:.3f} | {row['lipschitz_estimate']:.3f} |"
        )
    lines.append("")
    lines.append("The talk's CIFAR-10 rows (ResNeXt, 200 epochs) for comparison: median distance / % error at 0.1")
    for method, (median, error) in TALK_CIFAR10_ROWS.items():
        lines.append(f"  {method}: {median:.2f} / {error:.2f}")
    return "\n".join(lines)


def plot_error_curves(results, max_epsilon, path, dataset):
    plt = pyplot()

    # Stop where every curve has (nearly) reached 100%, not at the search's upper end.
    finite = np.concatenate([row["distances"][np.isfinite(row["distances"])] for row in results.values()])
    largest = min(max_epsilon, 1.1 * float(np.quantile(finite, 0.99))) if finite.size else max_epsilon
    epsilons = np.linspace(0.0, max(largest, 1e-3), 121)
    figure, axis = plt.subplots(figsize=(6, 4))
    for method, row in results.items():
        axis.plot(epsilons, 100 * regularization.error_curve(row["distances"], epsilons), label=method)
    axis.set_xlabel("l2 attack radius eps (pixels in [0, 1])")
    axis.set_ylabel("% error (PGD battery)")
    axis.set_ylim(0, 100)
    axis.set_title(f"{dataset}: test error under l2 attacks, per training objective")
    axis.grid(alpha=0.3)
    axis.legend()
    figure.tight_layout()
    save_figure(figure, path)


def main(argv=None):
    args = parse_demo_arguments("tulip", __doc__, BUDGETS, argv, add_arguments)
    settings = dict(DATASET_SETTINGS[args.dataset])
    budget = vars(args.budget)
    for key, value in (
        ("num_train", args.num_train),
        ("num_test", args.num_test),
        ("eps_train", args.eps_train),
        ("eps_table", args.eps),
        ("lip_weight", args.lip_weight),
    ):
        if value is not None:
            (budget if key in budget else settings)[key] = value
    timer = PhaseTimer()
    x_train, y_train, x_test, y_test = load_dataset(
        args, args.dataset, num_train=budget["num_train"], num_test=budget["num_test"]
    )
    print(
        f"{args.dataset}: {len(x_train)} training and {len(x_test)} test images, "
        f"{budget['epochs']} epochs, eps_train={settings['eps_train']:g}, lip_weight={settings['lip_weight']:g}",
        flush=True,
    )
    results = {}
    for index, method in enumerate(METHODS, start=1):
        print(f"\n[{index}/{len(METHODS)}] {method}: training", flush=True)
        with timer.phase(f"{method} training"):
            model = train(method, (x_train, y_train), settings, budget, args.seed)
        print(f"[{index}/{len(METHODS)}] {method}: attacking {len(x_test)} test images", flush=True)
        with timer.phase(f"{method} attacks"):
            results[method] = measure(model, x_test, y_test, settings, budget)
    print()
    print(format_table(results, settings["eps_table"], args.dataset))
    plot_name = f"tulip_{args.dataset}_error_vs_eps.png"
    plot_error_curves(results, settings["max_epsilon"], args.output_dir / plot_name, args.dataset)
    print(f"\nerror-vs-eps plot: {args.output_dir / plot_name}")
    print_table(["phase", "wall s", "CPU s"], timer.rows(), title="Time")
    write_results(
        args.output_dir,
        {
            "dataset": args.dataset,
            "settings": settings,
            "budget": budget,
            "results": {
                method: {key: value for key, value in row.items() if key != "distances"}
                # None where the attacks found no adversarial example up to max_epsilon
                | {"distances": [float(d) if np.isfinite(d) else None for d in row["distances"]]}
                for method, row in results.items()
            },
            "time": timer.as_dict(),
            "files": [plot_name],
        },
    )
    return results


if __name__ == "__main__":
    main()
