"""Training under a wall-clock budget, and the speed and memory figures of a trained model.

Shared by demos/layer_comparison.py (every layer family gets the same seconds of training)
and demos/certified_mnist_best.py (the best recipe under --time-budget). A schedule that
depends on the *epoch* cannot be used when the number of epochs is not known in advance:
here the learning rate follows the fraction of the budget already spent.
"""

import math
import os
import resource
import sys
import time

import keras
import numpy as np

# fit() is told to run "forever"; the budget stops it.
MANY_EPOCHS = 100_000
_PAGE_BYTES = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def resident_mib():
    """The process's current resident memory (MiB): /proc/self/statm, else the peak from getrusage."""
    try:
        with open("/proc/self/statm") as statm:
            return int(statm.read().split()[1]) * _PAGE_BYTES / 2**20
    except OSError:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return peak / 2**20 if sys.platform == "darwin" else peak / 2**10


def budget_learning_rate(fraction, peak, warmup=0.05):
    """Learning rate at `fraction` (0 to 1) of the budget: linear warm-up to `peak`, then cosine to 0.

    Args:
        fraction: share of the time budget already spent.
        peak: the largest learning rate.
        warmup: share of the budget spent warming up.

    Examples:
        >>> budget_learning_rate(0.0, 1e-3) < budget_learning_rate(0.05, 1e-3) == 1e-3
        True
    """
    fraction = min(max(fraction, 0.0), 1.0)
    if fraction < warmup:
        return peak * (fraction + 1e-3) / warmup
    progress = (fraction - warmup) / (1.0 - warmup)
    return 0.5 * peak * (1.0 + math.cos(math.pi * progress))


class TimeBudget(keras.callbacks.Callback):
    """Stop `fit` after `seconds` of training wall clock; set the learning rate from the share of it spent.

    The budget starts after the first step (tracing and compiling it is recorded apart,
    as `first_step_seconds`). Records the training wall time, the images seen (`images_per_second`), the peak
    resident memory sampled after every batch (`peak_resident_mib`) and, when `evaluate`
    is given, `curve`: (training seconds, evaluate(model)) at each of `checkpoints` (shares
    of the budget) and at the end. Evaluations do not count as training time.

    Args:
        seconds: the wall-clock training budget.
        peak_learning_rate: the schedule's largest learning rate (None: leave the optimizer's).
        batch_size: images per training step (for the throughput).
        every: print a progress line every `every` seconds (0: never).
        label: prefix of the progress lines.
        checkpoints: shares of the budget (between 0 and 1) at which to call `evaluate`.
        evaluate: function of the model returning a number (None: no curve).

    Examples:
        >>> budget = TimeBudget(60, peak_learning_rate=1e-3, batch_size=128)
        >>> model.fit(x, y, batch_size=128, epochs=MANY_EPOCHS, callbacks=[budget], verbose=0)
    """

    def __init__(
        self, seconds, peak_learning_rate=None, batch_size=128, every=30.0, label="", checkpoints=(), evaluate=None
    ):
        super().__init__()
        self.seconds = float(seconds)
        self.peak_learning_rate = peak_learning_rate
        self.batch_size = int(batch_size)
        self.every = float(every)
        self.label = label
        self.checkpoints = sorted(float(share) for share in checkpoints if 0 < share < 1)
        self.evaluate = evaluate
        self.curve = []
        self.steps = 0
        self.epochs = 0.0
        self.peak_resident_mib = resident_mib()

    def on_train_begin(self, logs=None):
        self.start = time.perf_counter()
        self.paused = 0.0
        self.first_step_seconds = None
        self.last_print = self.start
        self.steps_per_epoch = self.params.get("steps") or 1
        self._set_learning_rate(0.0)

    def training_seconds(self):
        """Wall-clock seconds since `fit` began, evaluations excluded."""
        return time.perf_counter() - self.start - self.paused

    def _set_learning_rate(self, fraction):
        if self.peak_learning_rate is not None:
            self.model.optimizer.learning_rate = budget_learning_rate(fraction, self.peak_learning_rate)

    def _record(self):
        trained = self.training_seconds()
        before = time.perf_counter()
        self.curve.append((trained, float(self.evaluate(self.model))))
        self.paused += time.perf_counter() - before

    def on_train_batch_end(self, batch, logs=None):
        if self.first_step_seconds is None:  # tracing and compilation: not training time
            self.first_step_seconds = time.perf_counter() - self.start
            self.start = time.perf_counter()
            return
        self.steps += 1
        self.peak_resident_mib = max(self.peak_resident_mib, resident_mib())
        fraction = self.training_seconds() / self.seconds
        self._set_learning_rate(fraction)
        if self.evaluate is not None and self.checkpoints and fraction >= self.checkpoints[0]:
            self.checkpoints.pop(0)
            self._record()
        now = time.perf_counter()
        if self.every and now - self.last_print >= self.every:
            self.last_print = now
            loss = f", loss {float(logs['loss']):.4f}" if logs and "loss" in logs else ""
            epochs = self.steps / self.steps_per_epoch
            print(
                f"  {self.label}{self.training_seconds():.0f}/{self.seconds:.0f} s, {epochs:.2f} epochs{loss}",
                flush=True,
            )
        if fraction >= 1.0:
            self.model.stop_training = True

    def on_train_end(self, logs=None):
        self.wall_seconds = self.training_seconds()
        self.epochs = self.steps / self.steps_per_epoch
        if self.evaluate is not None:
            self._record()

    @property
    def images_per_second(self):
        """Training images per second of wall clock (the first, compiling step excluded)."""
        return self.steps * self.batch_size / max(self.wall_seconds, 1e-9)


def fit_for(model, x, y, budget, batch_size, validation_data=None):
    """`model.fit(x, y)` until the `TimeBudget` callback `budget` stops it; returns the history."""
    return model.fit(
        x,
        y,
        batch_size=batch_size,
        epochs=MANY_EPOCHS,
        callbacks=[budget],
        validation_data=validation_data,
        verbose=0,
    )


def inference_images_per_second(model, x, batch_size=256, repeats=3):
    """Images per second of `model.predict_on_batch` on batches of `x` (best of `repeats` passes, after a warm-up).

    Args:
        model: a Keras model (e.g. the plain-Keras `vanilla_export()` of a Lipschitz model).
        x: inputs; the first batch warms up (traces) the model.
        batch_size: images per call.
        repeats: passes over `x`; the fastest counts (other jobs on a shared machine slow some).
    """
    batches = [x[start : start + batch_size] for start in range(0, len(x), batch_size)]
    model.predict_on_batch(batches[0])
    best = math.inf
    for _ in range(repeats):
        start = time.perf_counter()
        for batch in batches:
            model.predict_on_batch(batch)
        best = min(best, time.perf_counter() - start)
    return len(x) / best


def one_hot(y, num_classes=10):
    """Integer labels as float32 one-hot rows."""
    return np.eye(num_classes, dtype="float32")[np.asarray(y, dtype="int64")]
