"""Wasserstein-1 distance estimation with 1-Lipschitz critics and the KR loss.

By Kantorovich-Rubinstein duality, W1(P, Q) = max over 1-Lipschitz f of E_P f - E_Q f.
Training a provably 1-Lipschitz network f to maximize E_P f - E_Q f (the `KR` loss)
therefore gives a *lower bound* of W1 that tightens as training proceeds; dividing by the
network's computed Lipschitz bound L keeps it a bound even when L is slightly above 1.

(a) A distribution and its translate: P a 2-D Gaussian mixture, Q = P + v. Then
    W1(P, Q) = ||v|| exactly (f(x) = -<x, v>/||v|| attains it, and no 1-Lipschitz f
    does better). The estimate is measured on fresh *paired* samples (x, x + v), so
    each term f(x) - f(x + v) is at most L ||v||: the estimate can approach the truth
    from below, never exceed it. An unconstrained critic trained with a gradient
    penalty (WGAN-GP) is shown for contrast: nothing bounds its estimate.
(b) MNIST digit 0 versus digit 8: three critics of the same shape (the BCOP paper's
    "Small" network with one output) compared on the test images: SpectralConv2D,
    BCOP, and unconstrained Conv2D/Dense trained with a gradient penalty. For each, the
    table gives the raw estimate and the certified lower bound estimate / L, with L the
    product of the exact layer norms (for the unconstrained critic a valid but loose
    bound, next to an empirical lower bound of its Lipschitz constant).

Usage:
    python demos/wasserstein.py            # default budget (about 6 min of CPU time)
    python demos/wasserstein.py --quick    # CI
    python demos/wasserstein.py --epochs 20

`--epochs` sets the MNIST training epochs; part (a) trains `translate_epochs` epochs.
Outputs (in --output-dir, default outputs/wasserstein): wasserstein_translate.png,
wasserstein_mnist.png, results.json.
"""

import sys

from _common import (
    PhaseTimer,
    build_network,
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

from deel_lip_ext.certification import lipschitz_bounds  # noqa: E402
from deel_lip_ext.layers import GroupSort2, SpectralDense  # noqa: E402
from deel_lip_ext.losses import HKR, KR  # noqa: E402
from deel_lip_ext.model import Sequential  # noqa: E402
from deel_lip_ext.utils import model_lipschitz_bound  # noqa: E402

TRANSLATION = np.array([1.5, 2.0], dtype="float32")  # ||v|| = 2.5
MIXTURE_CENTERS = np.array([[0.0, 0.0], [2.0, 0.5], [0.5, 2.0]], dtype="float32")
MIXTURE_STD = 0.35
GRADIENT_PENALTY_WEIGHT = 10.0
LEARNING_RATE = 1e-3
METHOD_LABELS = {"spectral": "SpectralConv2D", "bcop": "BCOP", "gp": "unconstrained + GP"}

BUDGETS = {
    "full": {
        "epochs": 6,
        "translate_epochs": 30,
        "translate_samples": 8192,
        "evaluation_pairs": 200000,
        "num_train": None,
        "evaluations_per_epoch": 4,
        "cpu_minutes": 6,
    },
    "quick": {
        "epochs": 1,
        "translate_epochs": 8,
        "translate_samples": 4096,
        "evaluation_pairs": 100000,
        "num_train": 20000,
        "evaluations_per_epoch": 12,
        "cpu_minutes": 1.5,
    },
}


# ----------------------------------------------------------------------------- critics


class GradientPenaltyCritic(keras.Model):
    """Trains an unconstrained critic on -KR + weight * E[(||grad f(x_t)|| - 1)^2] (WGAN-GP).

    x_t are random interpolates between the positive (label 1) and negative samples of
    the batch (Gulrajani et al., 2017). The penalty only encourages a unit gradient
    norm where it is sampled; it bounds nothing.
    """

    def __init__(self, critic, penalty_weight=GRADIENT_PENALTY_WEIGHT, **kwargs):
        super().__init__(**kwargs)
        self.critic = critic
        self.penalty_weight = penalty_weight
        self.kr = KR()

    def call(self, inputs, training=None):
        return self.critic(inputs, training=training)

    def train_step(self, data):
        import tensorflow as tf

        x, y = data
        is_positive = tf.reshape(tf.equal(tf.cast(y, x.dtype), 1.0), [-1])
        x_p, x_q = tf.boolean_mask(x, is_positive), tf.boolean_mask(x, tf.logical_not(is_positive))
        n = tf.minimum(tf.shape(x_p)[0], tf.shape(x_q)[0])
        t = tf.random.uniform(tf.concat([[n], tf.ones([tf.rank(x) - 1], tf.int32)], axis=0))
        interpolates = t * x_p[:n] + (1.0 - t) * x_q[:n]
        with tf.GradientTape() as tape:
            with tf.GradientTape() as inner:
                inner.watch(interpolates)
                f_interpolates = self.critic(interpolates, training=True)
            gradient = tf.reshape(inner.gradient(f_interpolates, interpolates), [n, -1])
            penalty = tf.reduce_mean(tf.square(tf.sqrt(tf.reduce_sum(tf.square(gradient), axis=1) + 1e-12) - 1.0))
            kr = self.kr(y, self.critic(x, training=True))
            loss = -kr + self.penalty_weight * penalty
        variables = self.critic.trainable_variables
        self.optimizer.apply_gradients(zip(tape.gradient(loss, variables), variables))
        return {"KR": kr, "penalty": penalty}


def plain_small_critic(input_shape):
    """The "Small" network with stock Conv2D/Dense and ReLU (the gradient-penalty critic)."""
    return keras.Sequential(
        [
            keras.Input(input_shape),
            keras.layers.Conv2D(16, 4, strides=2, padding="same", activation="relu"),
            keras.layers.Conv2D(32, 4, strides=2, padding="same", activation="relu"),
            keras.layers.Flatten(),
            keras.layers.Dense(100, activation="relu"),
            keras.layers.Dense(1),
        ],
        name="kw_small_plain",
    )


def dense_critic(method, input_dim, width=64):
    """A 3-layer MLP critic: SpectralDense + GroupSort2 (Lipschitz) or Dense + ReLU (for GP)."""
    if method == "gp":
        return keras.Sequential(
            [
                keras.Input((input_dim,)),
                keras.layers.Dense(width, activation="relu"),
                keras.layers.Dense(width, activation="relu"),
                keras.layers.Dense(1),
            ],
            name="mlp_plain",
        )
    return Sequential(
        [
            keras.Input((input_dim,)),
            SpectralDense(width),
            GroupSort2(),
            SpectralDense(width),
            GroupSort2(),
            SpectralDense(1),
        ],
        name="mlp_spectral",
    )


class EstimateHistory(keras.callbacks.Callback):
    """Records E_P f - E_Q f on held-out samples `per_epoch` times per epoch (the last at its end)."""

    def __init__(self, x_p, x_q, steps_per_epoch, per_epoch=1):
        super().__init__()
        self.x_p, self.x_q = x_p, x_q
        self.steps_per_epoch = steps_per_epoch
        # The steps after which to evaluate, evenly spread over the epoch.
        per_epoch = max(1, min(per_epoch, steps_per_epoch))
        self.checkpoints = {round(steps_per_epoch * (i + 1) / per_epoch) for i in range(per_epoch)}
        self.epochs, self.estimates = [], []
        self._epoch = 0

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        if batch + 1 in self.checkpoints:
            self.epochs.append(self._epoch + (batch + 1) / self.steps_per_epoch)
            self.estimates.append(kr_estimate(self.model, self.x_p, self.x_q))


def critic_output(model, x, batch_size=2048):
    return np.concatenate(
        [
            keras.ops.convert_to_numpy(model(x[i : i + batch_size], training=False))[:, 0]
            for i in range(0, len(x), batch_size)
        ]
    )


def kr_estimate(model, x_p, x_q):
    """E_P f - E_Q f over the given samples (float64 means)."""
    return float(
        np.mean(critic_output(model, x_p), dtype="float64") - np.mean(critic_output(model, x_q), dtype="float64")
    )


def train_critic(method, critic, x_p, x_q, held_out, epochs, batch_size, per_epoch=1):
    """Maximize E_P f - E_Q f on (x_p, x_q).

    Returns:
        The training curve: `(epochs, estimates)`, the held-out estimate `per_epoch`
        times per epoch, at the (fractional) epochs where it was measured.
    """
    x = np.concatenate([x_p, x_q])
    y = np.concatenate([np.ones(len(x_p)), np.zeros(len(x_q))]).astype("float32")[:, None]
    if method == "gp":
        model = GradientPenaltyCritic(critic)
        model.compile(optimizer=keras.optimizers.Adam(LEARNING_RATE))
    else:
        model = critic
        # HKR with alpha = 0 is -KR: minimizing it maximizes the KR estimate.
        model.compile(optimizer=keras.optimizers.Adam(LEARNING_RATE), loss=HKR(alpha=0.0, name="minus_KR"))
    history = EstimateHistory(*held_out, steps_per_epoch=-(-len(x) // batch_size), per_epoch=per_epoch)
    model.fit(x, y, batch_size=batch_size, epochs=epochs, shuffle=True, callbacks=[history], verbose=fit_verbosity())
    return history.epochs, history.estimates


def lipschitz_summary(critic, x_sample):
    """(certified upper bound, empirical lower bound) of the critic's Lipschitz constant."""
    lower, upper = lipschitz_bounds(critic, x_sample, steps=20)
    return upper, lower


# ----------------------------------------------------------------------------- (a) translate


def sample_mixture(n, rng):
    centers = MIXTURE_CENTERS[rng.integers(0, len(MIXTURE_CENTERS), n)]
    return (centers + MIXTURE_STD * rng.standard_normal((n, 2))).astype("float32")


def translate_experiment(budget, seed, timer):
    rng = np.random.default_rng(seed)
    n = budget.translate_samples
    x_p, x_q = sample_mixture(n, rng), sample_mixture(n, rng) + TRANSLATION
    # Fresh paired samples: each f(x) - f(x + v) <= L ||v||, so the estimate cannot exceed the truth.
    x_eval = sample_mixture(budget.evaluation_pairs, rng)
    truth = float(np.linalg.norm(TRANSLATION))
    rows, results, critics, curves = [], {}, {}, {}
    for method in ("spectral", "gp"):
        keras.utils.set_random_seed(seed)
        critic = dense_critic(method, 2)
        with timer.phase(f"(a) {method}"):
            curves[method] = train_critic(
                method, critic, x_p, x_q, (x_eval[:4096], x_eval[:4096] + TRANSLATION), budget.translate_epochs, 256
            )[1]
        estimate = kr_estimate(critic, x_eval, x_eval + TRANSLATION)
        upper, lower = lipschitz_summary(critic, x_eval[:256])
        results[method] = {
            "estimate": estimate,
            "relative_error": (estimate - truth) / truth,
            "lip_const": upper,
            "lip_lower_bound": lower,
            "certified_estimate": estimate / upper,
            "curve": curves[method],
        }
        critics[method] = critic
        rows.append(
            (
                "SpectralDense MLP" if method == "spectral" else "Dense MLP + GP",
                f"{estimate:.4f}",
                f"{100 * (estimate - truth) / truth:+.2f} %",
                f"{upper:.6g}",
                f"{lower:.4f}",
                f"{estimate / upper:.4f}",
            )
        )
    print_table(
        ["critic", "estimate E_P f - E_Q f", "vs truth", "Lipschitz bound L", "empirical L >=", "estimate / L"],
        rows,
        title=f"(a) W1(P, P + v) = ||v|| = {truth:.4f} ({budget.evaluation_pairs} fresh pairs)",
    )
    return {"true_w1": truth, "translation": TRANSLATION, **results}, (x_p, x_q, critics, curves, truth)


def plot_translate(path, x_p, x_q, critics, curves, truth):
    plt = pyplot()
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4.2))
    low, high = np.minimum(x_p.min(0), x_q.min(0)) - 0.5, np.maximum(x_p.max(0), x_q.max(0)) + 0.5
    grid_x, grid_y = np.meshgrid(np.linspace(low[0], high[0], 120), np.linspace(low[1], high[1], 120))
    potential = critic_output(critics["spectral"], np.stack([grid_x.ravel(), grid_y.ravel()], 1).astype("float32"))
    contours = left.contourf(grid_x, grid_y, potential.reshape(grid_x.shape), levels=20, cmap="coolwarm", alpha=0.6)
    fig.colorbar(contours, ax=left, label="critic value f(x) (SpectralDense MLP)")
    left.scatter(*x_p[:400].T, s=4, c="navy", label="P")
    left.scatter(*x_q[:400].T, s=4, c="darkred", label="Q = P + v")
    left.annotate(
        "", xy=MIXTURE_CENTERS[0] + TRANSLATION, xytext=MIXTURE_CENTERS[0], arrowprops={"arrowstyle": "->", "lw": 2}
    )
    left.set_title("samples and the learned 1-Lipschitz potential")
    left.set_xlabel("x1 (same units as ||v||)")
    left.set_ylabel("x2")
    left.legend(loc="lower right")
    left.set_aspect("equal")
    for method, label in (("spectral", "SpectralDense MLP"), ("gp", "Dense MLP + gradient penalty")):
        right.plot(np.arange(1, len(curves[method]) + 1), curves[method], marker=".", label=label)
    right.axhline(truth, color="k", linestyle="--", label="true W1 = ||v||")
    right.set_xlabel("epoch")
    right.set_ylabel("E_P f - E_Q f on held-out pairs (same units as ||v||)")
    right.set_title("estimate during training")
    right.legend()
    fig.suptitle(f"(a) W1(P, P + v) = ||v|| = {truth:.2f}: the 1-Lipschitz critic approaches it from below")
    fig.tight_layout()
    save_figure(fig, path)


# ----------------------------------------------------------------------------- (b) MNIST


def mnist_experiment(args, timer):
    budget = args.budget
    x_train, y_train, x_test, y_test = load_dataset(args, "mnist", num_train=budget.num_train)
    train_p, train_q = x_train[y_train == 0], x_train[y_train == 8]
    test_p, test_q = x_test[y_test == 0], x_test[y_test == 8]
    print(f"\n(b) MNIST 0 vs 8: {len(train_p)} + {len(train_q)} training, {len(test_p)} + {len(test_q)} test images")
    builders = {
        "spectral": lambda: build_network("spectral", num_classes=1),
        "bcop": lambda: build_network("bcop", num_classes=1),
        "gp": lambda: plain_small_critic(x_train.shape[1:]),
    }
    rows, results = [], {}
    for method, build in builders.items():
        keras.utils.set_random_seed(args.seed)
        critic = build()
        with timer.phase(f"(b) {method}"):
            curve_epochs, curve = train_critic(
                method, critic, train_p, train_q, (test_p, test_q), budget.epochs, 128, budget.evaluations_per_epoch
            )
        cpu_seconds = timer.phases[-1][2]
        estimate = kr_estimate(critic, test_p, test_q)
        if method == "gp":
            upper, lower = lipschitz_summary(critic, x_test[:64])
        else:
            upper, lower = model_lipschitz_bound(critic), None
        results[method] = {
            "estimate": estimate,
            "lip_const": upper,
            "lip_lower_bound": lower,
            "certified_estimate": estimate / upper,
            "curve": curve,
            "curve_epochs": curve_epochs,
            "train_cpu_s": cpu_seconds,
        }
        rows.append(
            (
                METHOD_LABELS[method],
                f"{estimate:.4f}",
                f"{upper:.6g}" + ("" if lower is None else f" (empirical >= {lower:.3f})"),
                f"{estimate / upper:.4f}",
                f"{cpu_seconds:.0f}",
            )
        )
    print_table(
        ["critic", "estimate E_0 f - E_8 f", "Lipschitz bound L", "certified W1 >= estimate / L", "train CPU s"],
        rows,
        title=f"(b) W1(MNIST test 0s, test 8s) lower bounds after {budget.epochs} epochs",
    )
    return results


def plot_mnist(path, results):
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    for method, result in results.items():
        ax.plot(result["curve_epochs"], result["curve"], marker=".", label=f"{METHOD_LABELS[method]} (raw)")
    ax.set_xlabel("epoch")
    ax.set_ylabel("E_0 f - E_8 f on test images (L2, pixels in [0, 1])")
    ax.set_title("W1(MNIST 0, MNIST 8): critic estimates during training")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    save_figure(fig, path)


def main(argv=None):
    args = parse_demo_arguments("wasserstein", __doc__, BUDGETS, argv)
    timer = PhaseTimer()
    translate, plot_data = translate_experiment(args.budget, args.seed, timer)
    plot_translate(args.output_dir / "wasserstein_translate.png", *plot_data)
    mnist = mnist_experiment(args, timer)
    plot_mnist(args.output_dir / "wasserstein_mnist.png", mnist)
    print_table(["phase", "wall s", "CPU s"], timer.rows(), title="Time")
    write_results(
        args.output_dir,
        {
            "translate": translate,
            "mnist_0_vs_8": mnist,
            "epochs": args.budget.epochs,
            "time": timer.as_dict(),
            "files": ["wasserstein_translate.png", "wasserstein_mnist.png"],
        },
    )
    spectral = translate["spectral"]
    return 0 if spectral["estimate"] <= spectral["lip_const"] * translate["true_w1"] else 1


if __name__ == "__main__":
    sys.exit(main())
