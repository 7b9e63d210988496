"""deel-lip's HKR binary classifier (MNIST 0 vs 8): |f(x)| is a certified distance to the boundary.

A single-output 1-Lipschitz network f trained with the hinge-regularized
Kantorovich-Rubinstein loss (HKR: -KR + alpha * hinge, deel-lip's demo settings
alpha = 10, margin 1) classifies by the sign of f. Since f is L-Lipschitz, no
perturbation smaller than |f(x)| / L can change the sign: |f(x)| / L lower-bounds the
distance from x to the nearest adversarial example.

The demo trains the classifier, then searches for the nearest adversarial example of
test digits with PGD over increasing L2 budgets and checks, point by point, that the
distance found is never below |f(x)| / L (prints the check and how tight the bound
is). The figure shows digits, their nearest adversarial examples, and examples pushed
further into the other class (eps = 2 x that distance): for such gradient-norm
preserving networks they look like the other digit, the "interpretable" property of
deel-lip's talks.

Usage:
    python demos/hkr_binary.py             # default budget (about 2 min of CPU time)
    python demos/hkr_binary.py --quick     # CI
    python demos/hkr_binary.py --epochs 20

Outputs (in --output-dir, default outputs/hkr_binary): hkr_adversarial_examples.png,
hkr_radius_vs_distance.png, results.json.
"""

import sys

from _common import (
    PhaseTimer,
    fit_verbosity,
    geometric_budgets,
    load_dataset,
    nearest_adversarial_examples,
    parse_demo_arguments,
    print_table,
    pyplot,
    save_figure,
    save_image_grid,
    write_results,
)

import keras  # noqa: E402
import numpy as np  # noqa: E402

from deel_lip_ext import datasets  # noqa: E402
from deel_lip_ext.attacks import pgd  # noqa: E402
from deel_lip_ext.certification import certify  # noqa: E402
from deel_lip_ext.layers import FrobeniusDense, GroupSort2, SpectralDense  # noqa: E402
from deel_lip_ext.losses import HKR, KR, HingeMargin  # noqa: E402
from deel_lip_ext.metrics import CertifiedAccuracy  # noqa: E402
from deel_lip_ext.model import Sequential  # noqa: E402

POSITIVE_DIGIT, NEGATIVE_DIGIT = 0, 8
ALPHA, MIN_MARGIN = 10.0, 1.0
EPSILONS = (0.5, 1.0, 1.5)

BUDGETS = {
    "full": {"epochs": 10, "num_checked": 300, "attack_steps": 100, "num_examples": 8, "cpu_minutes": 2},
    "quick": {"epochs": 3, "num_checked": 60, "attack_steps": 30, "num_examples": 6, "cpu_minutes": 1},
}


def hkr_classifier(input_shape=(28, 28, 1)):
    """deel-lip's MNIST HKR demo network: SpectralDense + GroupSort2, a FrobeniusDense output."""
    return Sequential(
        [
            keras.Input(input_shape),
            keras.layers.Flatten(),
            SpectralDense(64),
            GroupSort2(),
            SpectralDense(32),
            GroupSort2(),
            SpectralDense(16),
            GroupSort2(),
            FrobeniusDense(1, use_bias=False),
        ],
        k_coef_lip=1.0,
        name="hkr_classifier",
    )


def load_binary_mnist(args):
    x_train, y_train, x_test, y_test = load_dataset(args, "mnist")
    train = datasets.binary_subset(x_train, y_train, POSITIVE_DIGIT, NEGATIVE_DIGIT)
    test = datasets.binary_subset(x_test, y_test, POSITIVE_DIGIT, NEGATIVE_DIGIT)
    return train, test


def train(model, x, y, epochs):
    model.compile(
        optimizer=keras.optimizers.Adam(1e-3),
        loss=HKR(alpha=ALPHA, min_margin=MIN_MARGIN),
        metrics=[CertifiedAccuracy(0.0, name="accuracy"), KR(), HingeMargin(min_margin=MIN_MARGIN)],
    )
    model.fit(x, y, batch_size=128, epochs=epochs, shuffle=True, verbose=fit_verbosity())


def check_radius_below_distance(radii, distances):
    """Per-point comparison of the certified radius |f(x)|/L with the nearest adversarial distance found."""
    correct = radii > 0
    found = correct & np.isfinite(distances)
    ratio = distances[found] / radii[found]
    return {
        "n_points": int(radii.size),
        "n_correct": int(correct.sum()),
        "n_adversarial_found": int(found.sum()),
        "n_violations": int(np.sum(distances[correct] < radii[correct])),
        "min_distance_over_radius": float(ratio.min()) if ratio.size else None,
        "median_distance_over_radius": float(np.median(ratio)) if ratio.size else None,
    }


def plot_radius_vs_distance(path, radii, distances, labels):
    plt = pyplot()
    found = (radii > 0) & np.isfinite(distances)
    fig, ax = plt.subplots(figsize=(4.6, 4.2))
    for label, digit, color in ((1.0, POSITIVE_DIGIT, "C0"), (-1.0, NEGATIVE_DIGIT, "C1")):
        keep = found & (labels == label)
        ax.scatter(radii[keep], distances[keep], s=10, color=color, label=f"digit {digit}")
    top = float(max(radii[found].max(initial=1.0), distances[found].max(initial=1.0))) * 1.05
    ax.plot([0, top], [0, top], "k--", label="distance = |f(x)| / L")
    ax.fill_between([0, top], [0, 0], [0, top], color="red", alpha=0.08, label="impossible region")
    ax.set_xlabel("certified radius |f(x)| / L (L2, pixels in [0, 1])")
    ax.set_ylabel("L2 distance of the nearest adversarial found")
    ax.set_xlim(0, top)
    ax.set_ylim(0, top)
    ax.set_title(f"MNIST {POSITIVE_DIGIT} vs {NEGATIVE_DIGIT}: no point below the diagonal", fontsize=10)
    ax.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    save_figure(fig, path)


def draw_examples(path, model, x, y, x_nearest, distances, budget):
    """Digits, their nearest adversarial examples, and examples pushed to twice that distance."""
    deeper = np.stack(
        [
            pgd(model, x[i : i + 1], y[i : i + 1], 2.0 * float(d), norm="l2", steps=budget.attack_steps, loss="cw")[0]
            for i, d in enumerate(distances)
        ]
    )
    scores = [keras.ops.convert_to_numpy(model(images, training=False))[:, 0] for images in (x, deeper)]
    digit = {True: POSITIVE_DIGIT, False: NEGATIVE_DIGIT}
    save_image_grid(
        path,
        [x, x_nearest, deeper],
        ["clean", "nearest adversarial", "2 x farther"],
        [
            [f"{digit[bool(s > 0)]}: f = {s:+.2f}" for s in scores[0]],
            [f"d = {d:.2f}" for d in distances],
            [f"f = {s:+.2f}" for s in scores[1]],
        ],
        title=f"HKR classifier, MNIST {POSITIVE_DIGIT} (f > 0) vs {NEGATIVE_DIGIT} (f < 0)",
    )


def main(argv=None):
    args = parse_demo_arguments("hkr_binary", __doc__, BUDGETS, argv)
    budget, out = args.budget, args.output_dir
    timer = PhaseTimer()
    (x_train, y_train), (x_test, y_test) = load_binary_mnist(args)
    print(
        f"MNIST {POSITIVE_DIGIT} (label +1) vs {NEGATIVE_DIGIT} (label -1): "
        f"{len(x_train)} training, {len(x_test)} test images"
    )

    model = hkr_classifier(x_train.shape[1:])
    with timer.phase("training"):
        train(model, x_train, y_train, budget.epochs)

    result = certify(model, (x_test, y_test), EPSILONS, verbose=False)
    print_table(
        ["eps (L2)"] + [str(e) for e in EPSILONS],
        [["certified accuracy %"] + [f"{100 * a:.2f}" for a in result.certified_accuracy]],
        title=(
            f"Test set: accuracy {100 * result.clean_accuracy:.2f} %, "
            f"Lipschitz bound L = {result.lip_const:.7f} (computed)"
        ),
    )

    # Spread the checked points over both classes (the test set is sorted by nothing useful).
    rng = np.random.default_rng(args.seed)
    checked = np.sort(rng.choice(len(x_test), size=min(budget.num_checked, len(x_test)), replace=False))
    with timer.phase("nearest adversarial search"):
        x_adv, distances = nearest_adversarial_examples(
            model, x_test[checked], y_test[checked], geometric_budgets(0.2, 10.0, 42), steps=budget.attack_steps
        )
    radii = result.radii[checked]
    check = check_radius_below_distance(radii, distances)
    print_table(
        ["points", "correct", "adversarial found", "violations (d < r)", "min d / r", "median d / r"],
        [
            (
                check["n_points"],
                check["n_correct"],
                check["n_adversarial_found"],
                check["n_violations"],
                f"{check['min_distance_over_radius']:.3f}",
                f"{check['median_distance_over_radius']:.3f}",
            )
        ],
        title="Check: r = |f(x)| / L lower-bounds the distance d of the nearest adversarial example found by PGD",
    )
    print(f"nearest adversarial distance >= |f(x)| / L for every point: {check['n_violations'] == 0}")
    plot_radius_vs_distance(out / "hkr_radius_vs_distance.png", radii, distances, y_test[checked, 0])

    # A few correctly classified digits of each class, with an adversarial example found.
    usable = np.flatnonzero((radii > 0) & np.isfinite(distances))
    labels = y_test[checked[usable], 0]
    k = budget.num_examples
    shown = np.concatenate([usable[labels > 0][: k // 2], usable[labels < 0][: k - k // 2]])
    with timer.phase("figures"):
        draw_examples(
            out / "hkr_adversarial_examples.png",
            model,
            x_test[checked[shown]],
            y_test[checked[shown]],
            x_adv[shown],
            distances[shown],
            budget,
        )
    print_table(["phase", "wall s", "CPU s"], timer.rows(), title="Time")
    write_results(
        out,
        {
            "epochs": budget.epochs,
            "certification": result.as_dict(),
            "check": check,
            "time": timer.as_dict(),
            "files": ["hkr_adversarial_examples.png", "hkr_radius_vs_distance.png"],
        },
    )
    return 0 if check["n_violations"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
