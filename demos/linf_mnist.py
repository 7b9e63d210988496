"""l_inf-dist Net on MNIST: train, then clean / PGD / certified accuracy at eps = 0.3.

Reproduces the setting of Zhang et al. (ICML 2021, v1; ICLR 2022, v2) at a
reduced size that runs on 2 CPU cores in under 15 minutes, and prints the
papers' table (clean / PGD / certified accuracy, %) with their numbers
beside this run's. The model normalizes (x - 0.1307) / 0.3081 inside, so
attacks and certificates are in pixel units; "certified" is interval bound
propagation (the papers' figure), and the Lipschitz rule (margin / 2 > eps /
std) is printed too.

Usage:
    python demos/linf_mnist.py --quick          # about a minute (CI)
    python demos/linf_mnist.py                  # reduced default: about 8 min of CPU time
    python demos/linf_mnist.py --full           # v2 paper setting (width 5120, 450 epochs: GPU)
    python demos/linf_mnist.py --model hybrid   # l_inf-dist Net + MLP (v1 loss)

Outputs (in --output-dir, default outputs/linf_mnist): linf_accuracy_vs_eps.png, results.json.
"""

import math
import sys

from _common import (
    FIGURE_DPI,
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

from deel_lip_ext import linf, zoo  # noqa: E402

MNIST_MEAN, MNIST_STD = 0.1307, 0.3081

# Papers' MNIST eps = 0.3 results (clean / PGD / certified, %), algorithms.md section 4.9.
PAPER_ROWS = (
    ("paper v1 (ICML'21): l_inf-dist Net", 98.54, 94.71, 92.64),
    ("paper v1 (ICML'21): l_inf-dist Net+MLP", 98.56, 95.28, 93.09),
    ("paper v2 (ICLR'22): l_inf-dist Net", 98.56, 94.73, 93.20),
)

# Defaults of the command-line flags for each size ("full" is this demo's default run,
# "paper" the papers' setting chosen by --full). cpu_minutes: measured CPU time (the
# default's 469 s in docs/tutorials/linf_mnist.md; the paper's is a GPU budget).
PRESETS = {
    "quick": dict(depth=3, width=64, epochs=6, constant_epochs=1, growth_epochs=4, batch_size=128,
                  num_train=10000, num_test=500, pgd_steps=10, augment=False, cpu_minutes=1.5),
    "full": dict(depth=5, width=128, epochs=10, constant_epochs=2, growth_epochs=6, batch_size=128,
                 num_train=None, num_test=None, pgd_steps=10, augment=True, cpu_minutes=8),
    # v2 MNIST: p = 8 for 25 epochs, 8 -> 1000 over 375, p = inf for the last 50; PGD-100.
    "paper": dict(depth=5, width=5120, epochs=450, constant_epochs=25, growth_epochs=375, batch_size=512,
                  num_train=None, num_test=None, pgd_steps=100, augment=True, cpu_minutes=60 * 24 * 30),
}  # fmt: skip
EPSILON_CURVE = np.linspace(0.0, 0.45, 10)  # l_inf radii (pixels) of the accuracy-vs-eps plot


def add_arguments(parser):
    """The demo's own flags, besides the shared ones of `_common.parse_demo_arguments`."""
    parser.add_argument("--full", action="store_true", help="the papers' setting (needs a GPU)")
    parser.add_argument(
        "--model",
        choices=("net", "hybrid"),
        default="net",
        help="l_inf-dist Net (v2 loss) or l_inf-dist Net + MLP (v1 loss)",
    )
    parser.add_argument("--depth", type=int, help="l_inf-dist layers (net: output layer included)")
    parser.add_argument("--width", type=int, help="units of the hidden l_inf-dist layers")
    parser.add_argument("--hidden-units", type=int, default=512, help="hybrid head width")
    parser.add_argument("--constant-epochs", type=float, help="epochs at p = 8")
    parser.add_argument("--growth-epochs", type=float, help="epochs of the p = 8 -> 1000 growth (then p = inf)")
    parser.add_argument("--batch-size", type=int, help="512 in the papers; 128 in the short runs (more steps)")
    parser.add_argument("--lr", type=float, default=0.03, help="Adam learning rate (cosine decay to 0)")
    parser.add_argument("--eps", type=float, default=0.3, help="evaluation radius (pixels)")
    parser.add_argument("--eps-train", type=float, help="training radius (pixels): 0.45 net, 0.35 hybrid")
    parser.add_argument("--num-train", type=int)
    parser.add_argument("--num-test", type=int)
    parser.add_argument("--pgd-steps", type=int)
    parser.add_argument("--pgd-restarts", type=int, default=1)
    parser.add_argument("--no-augment", dest="augment", action="store_false", default=None)


def parse_args(argv=None):
    args = parse_demo_arguments(
        "linf_mnist", __doc__, PRESETS, argv, add_arguments,
        budget_name=lambda a: "quick" if a.quick else "paper" if a.full else "full",
    )  # fmt: skip
    if args.quick and args.full:
        raise SystemExit("demos/linf_mnist.py: --quick and --full exclude each other; pick one.")
    for name, value in vars(args.budget).items():
        if getattr(args, name, None) is None:
            setattr(args, name, value)
    if args.eps_train is None:
        args.eps_train = 0.45 if args.model == "net" else 0.35
    if args.model == "hybrid" and not (args.quick or args.full) and args.depth == 5:
        args.depth = 4  # the papers' hybrid: 4 l_inf-dist layers for MNIST
    return args


def shifted_batches(x, y, batch_size, augment, seed):
    """tf.data pipeline; augmentation = random 28 x 28 crop of the image padded by 1 (edge), as in v2."""
    import tensorflow as tf

    dataset = tf.data.Dataset.from_tensor_slices((x, y)).shuffle(len(x), seed=seed, reshuffle_each_iteration=True)
    if augment:
        # With a 1-pixel pad, SYMMETRIC padding repeats the edge pixel.
        padded = lambda image: tf.pad(image, [[1, 1], [1, 1], [0, 0]], mode="SYMMETRIC")  # noqa: E731
        dataset = dataset.map(lambda image, label: (tf.image.random_crop(padded(image), tf.shape(image)), label))
    return dataset.batch(batch_size).prefetch(2)


def build(args, steps_per_epoch):
    """Model, training model, loss and callbacks for the chosen architecture."""
    eps_train = args.eps_train / MNIST_STD  # in the units of the normalized input = of the logits
    total_steps = args.epochs * steps_per_epoch
    optimizer = keras.optimizers.Adam(
        keras.optimizers.schedules.CosineDecay(args.lr, decay_steps=max(total_steps, 1)),
        beta_1=0.9,
        beta_2=0.99,
        epsilon=1e-10,
    )
    common = dict(depth=args.depth, width=args.width, mean=MNIST_MEAN, std=MNIST_STD, p=8.0)
    callbacks = []
    if args.model == "net":
        model = zoo.linf_dist_net(logit_scale=True, **common)
        # v2 MNIST: cross-entropy weight 0.05 -> 2e-4 along the p schedule.
        loss = linf.ClippedHingeCrossEntropy(eps_train, 0.05, 2e-4, logit_scale=model.get_layer("logit_scale"))
        train_model, losses, followers = model, loss, [loss]
    else:
        model = zoo.linf_dist_net_mlp(hidden_units=args.hidden_units, **common)
        loss = linf.HybridIntervalCrossEntropy(zoo.hybrid_head(model), eps_train, kappa=0.5)
        train_model, losses, followers = zoo.hybrid_training_model(model), {"features": loss, "logits": None}, []
        # v1 hybrid: eps grows linearly from 0 over the constant phase.
        ramp_steps = max(args.constant_epochs * steps_per_epoch, 1)
        callbacks.append(
            keras.callbacks.LambdaCallback(
                on_train_batch_begin=lambda batch, logs: loss.eps.assign(
                    eps_train * min(1.0, optimizer.iterations.numpy() / ramp_steps)
                )
            )
        )
    callbacks.append(
        linf.LpScheduler(
            8.0, 1000.0, args.constant_epochs, args.growth_epochs, steps_per_epoch=steps_per_epoch,
            followers=followers,
        )
    )  # fmt: skip
    # XLA: the chunked l_inf-distance loops fuse (Keras turns it off on CPU-only machines by default).
    train_model.compile(optimizer=optimizer, loss=losses, jit_compile=True)
    return model, train_model, callbacks


def table(rows):
    """The papers' table: clean / PGD / certified accuracy in %."""
    name_width = max(len(row[0]) for row in rows)
    lines = [
        f"| {'model':<{name_width}} | clean | PGD   | certified |",
        f"|{'-' * (name_width + 2)}|-------|-------|-----------|",
    ]
    for name, clean, pgd, certified in rows:
        lines.append(f"| {name:<{name_width}} | {clean:5.2f} | {pgd:5.2f} | {certified:9.2f} |")
    return "\n".join(lines)


def accuracy_curves(model, x, y, batch_size):
    """Certified accuracy (IBP and the Lipschitz rule) at every radius of EPSILON_CURVE."""
    lip_const = linf.linf_lipschitz_bound(model)
    return {
        "eps": EPSILON_CURVE,
        "certified_ibp": [float(np.mean(linf.certify_ibp(model, x, y, eps, batch_size=batch_size)))
                          for eps in EPSILON_CURVE],
        "certified_lipschitz": [float(np.mean(linf.certify_lipschitz(model, x, y, eps, lip_const, batch_size)))
                                for eps in EPSILON_CURVE],
    }  # fmt: skip


def plot_accuracy_curves(path, curves, scores, eps, name):
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 4), dpi=FIGURE_DPI)
    ax.plot(curves["eps"], 100 * np.array(curves["certified_ibp"]), marker=".", label="certified (IBP)")
    ax.plot(curves["eps"], 100 * np.array(curves["certified_lipschitz"]), marker=".",
            label="certified (Lipschitz rule)")  # fmt: skip
    ax.scatter([eps], [100 * scores["pgd"]], color="k", marker="x", zorder=3, label=f"PGD accuracy at eps = {eps:g}")
    ax.set_xlabel("l_inf radius eps (pixels in [0, 1])")
    ax.set_ylabel("accuracy on the test images (%)")
    ax.set_ylim(0, 100)
    ax.set_title(f"MNIST, {name}: certified accuracy against the l_inf radius")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    save_figure(fig, path)


def main(argv=None):
    args = parse_args(argv)
    timer = PhaseTimer()
    x_train, y_train, x_test, y_test = load_dataset(args, "mnist", num_train=args.num_train, num_test=args.num_test)
    steps_per_epoch = math.ceil(len(x_train) / args.batch_size)
    model, train_model, callbacks = build(args, steps_per_epoch)
    name = "l_inf-dist Net" if args.model == "net" else "l_inf-dist Net+MLP"
    print(
        f"{name}: depth {args.depth}, width {args.width}, {args.epochs} epochs "
        f"(p = 8 for {args.constant_epochs}, 8 -> 1000 over {args.growth_epochs}, then inf), "
        f"{len(x_train)} training images, eps_train {args.eps_train}",
        flush=True,
    )
    targets = y_train if args.model == "net" else {"features": y_train, "logits": y_train}
    with timer.phase("training"):
        train_model.fit(
            shifted_batches(x_train, targets, args.batch_size, args.augment, args.seed),
            epochs=args.epochs,
            callbacks=callbacks,
            shuffle=False,  # the pipeline shuffles
            verbose=fit_verbosity(),
        )

    linf.set_p(model, math.inf)  # certificates hold at p = inf only
    print(f"evaluating {len(x_test)} test images (PGD-{args.pgd_steps}, IBP, Lipschitz rule)", flush=True)
    with timer.phase("evaluation"):
        scores = linf.evaluate_linf_robustness(
            model, x_test, y_test, args.eps, pgd_steps=args.pgd_steps, pgd_restarts=args.pgd_restarts,
            batch_size=args.batch_size, seed=args.seed,
        )  # fmt: skip
    with timer.phase("accuracy curves"):
        curves = accuracy_curves(model, x_test, y_test, args.batch_size)
    plot_accuracy_curves(args.output_dir / "linf_accuracy_vs_eps.png", curves, scores, args.eps, name)
    run_name = f"this run: {name} (depth {args.depth}, width {args.width}, {args.epochs} ep.)"
    rows = [(run_name, 100 * scores["clean"], 100 * scores["pgd"], 100 * scores["certified"])]
    print(f"\nMNIST, eps = {args.eps} (l_inf): clean / PGD-{args.pgd_steps} / certified accuracy (%), "
          f"{len(x_test)} test images")  # fmt: skip
    print(table(rows + list(PAPER_ROWS)))
    print(f"certified by the Lipschitz rule (margin / 2 > eps / std): {100 * scores['certified_lipschitz']:.2f}%")
    print(f"accuracy-vs-eps plot: {args.output_dir / 'linf_accuracy_vs_eps.png'}")
    print_table(["phase", "wall s", "CPU s"], timer.rows(), title="Time")
    write_results(
        args.output_dir,
        {
            "model": args.model,
            "depth": args.depth,
            "width": args.width,
            "epochs": args.epochs,
            "num_train": len(x_train),
            "num_test": len(x_test),
            "eps": args.eps,
            "scores": scores,
            "curves": curves,
            "paper": [dict(zip(("model", "clean", "pgd", "certified"), row)) for row in PAPER_ROWS],
            "time": timer.as_dict(),
            "files": ["linf_accuracy_vs_eps.png"],
        },
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
