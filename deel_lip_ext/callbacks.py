"""Keras callbacks for Lipschitz training: deel-lip's names, the SVCM projection and the l_inf-dist p schedule."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import keras
import numpy as np
from keras import ops
from numpy.typing import ArrayLike

from deel_lip_ext._saving import check_saved_whole, config_without
from deel_lip_ext._tensorboard import EventWriter
from deel_lip_ext._validation import ArgumentTypeError, check_int, check_number
from deel_lip_ext.distance import check_p
from deel_lip_ext.layers.conv_baselines import SVCMConv2D
from deel_lip_ext.layers.linf import set_p
from deel_lip_ext.losses.state import assign_during_fit, carry_loss_state
from deel_lip_ext.utils import compute_layer_sv, layer_singular_values

__all__ = [
    "LossParamScheduler",
    "LossParamLog",
    "CondenseCallback",
    "MonitorCallback",
    "SVCMProjection",
    "LpScheduler",
    "schedule_ratio",
    "scheduled_p",
]


class _ConfiguredCallback(keras.callbacks.Callback):
    """A callback built back from its `get_config` (Keras's `Callback` has no `from_config`)."""

    @classmethod
    def from_config(cls, config: dict):
        return cls(**check_saved_whole(cls.__name__, config, "Build the callback again"))


def _loss_parameter(model, param_name):
    """The variable `model.loss.<param_name>`, or a clear error."""
    loss = getattr(model, "loss", None)
    variable = getattr(loss, param_name, None)
    if not isinstance(variable, keras.Variable):
        raise ValueError(
            f"param_name={param_name!r} is not a schedulable parameter of the model's loss {loss!r}; "
            f"compile with a deel_lip_ext.losses object, whose schedulable parameters are listed in "
            f"its `_params` ({getattr(loss, '_params', ())} here)."
        )
    return variable


@keras.saving.register_keras_serializable(package="deel_lip_ext")
class LossParamScheduler(_ConfiguredCallback):
    """Set a loss hyper-parameter to np.interp(step, xp, fp) before every training batch.

    On JAX the loss's variables become state of the compiled train step (`carry_loss_state`), so the
    schedule reaches the loss on every backend.

    Args:
        param_name: name of the loss attribute, e.g. "alpha", "min_margin", "tau".
        fp: values of the parameter at the steps `xp`.
        xp: increasing training steps (batches) at which the values are reached;
            constant before the first and after the last.
        step: the step the schedule starts from (to resume training).

    Examples:
        >>> model.compile(optimizer="adam", loss=MulticlassHKR(alpha=10.0))
        >>> model.fit(x, y, callbacks=[LossParamScheduler("alpha", fp=[10.0, 50.0], xp=[0, 1000])])
    """

    def __init__(self, param_name: str, fp: ArrayLike, xp: ArrayLike, step: int = 0) -> None:
        super().__init__()
        fp = np.asarray(fp, dtype="float64")
        xp = np.asarray(xp, dtype="float64")
        if fp.ndim != 1 or fp.shape != xp.shape or fp.size == 0:
            raise ValueError(
                f"fp and xp must be 1-D of the same non-zero length, got shapes {fp.shape} and {xp.shape}."
            )
        if np.any(np.diff(xp) < 0):
            raise ValueError(f"xp must be increasing, got {xp.tolist()}.")
        self.param_name = param_name
        self.fp = fp.tolist()
        self.xp = xp.tolist()
        self.step = int(step)
        self._assigned = None  # the value last assigned, to sync JAX's state only when it changes

    def value_at(self, step: int):
        """The scheduled value at a training step."""
        return float(np.interp(step, self.xp, self.fp))

    def on_train_begin(self, logs: dict | None = None):
        _loss_parameter(self.model, self.param_name)
        carry_loss_state(self.model)
        self._assigned = None

    def on_train_batch_begin(self, batch: int, logs: dict | None = None):
        value = self.value_at(self.step)
        if value != self._assigned:
            assign_during_fit(self.model, _loss_parameter(self.model, self.param_name), value)
            self._assigned = value
        self.step += 1

    def get_config(self) -> dict:
        return {"param_name": self.param_name, "fp": self.fp, "xp": self.xp, "step": self.step}


@keras.saving.register_keras_serializable(package="deel_lip_ext")
class LossParamLog(_ConfiguredCallback):
    """Print a loss hyper-parameter every `rate` epochs (and store it in `logs`).

    Args:
        param_name: name of the loss attribute, e.g. "alpha".
        rate: print every `rate` epochs.

    Examples:
        >>> model.fit(x, y, epochs=10, callbacks=[LossParamLog("alpha", rate=2)])
    """

    def __init__(self, param_name: str, rate: int = 1) -> None:
        super().__init__()
        self.param_name = param_name
        self.rate = check_int(rate, "rate")

    def on_train_begin(self, logs: dict | None = None):
        _loss_parameter(self.model, self.param_name)
        carry_loss_state(self.model)  # JAX: the logged value is the one the train step used

    def on_epoch_end(self, epoch: int, logs: dict | None = None):
        value = float(ops.convert_to_numpy(_loss_parameter(self.model, self.param_name)))
        if logs is not None:
            logs[self.param_name] = value
        if epoch % self.rate == 0:
            print(f"\nepoch {epoch}: loss parameter {self.param_name} = {value:.6g}")

    def get_config(self) -> dict:
        return {"param_name": self.param_name, "rate": self.rate}


@keras.saving.register_keras_serializable(package="deel_lip_ext")
class CondenseCallback(_ConfiguredCallback):
    """Call `condense()` on every layer that has it, after each epoch and/or batch.

    Condensing overwrites raw kernels with their constrained values; it keeps
    the model's function but disturbs momentum optimizers (deel-lip's caveat).

    Args:
        on_epoch: condense at the end of each epoch.
        on_batch: condense at the end of each training batch.

    Examples:
        >>> model.fit(x, y, callbacks=[CondenseCallback(on_epoch=True)])
    """

    def __init__(self, on_epoch: bool = True, on_batch: bool = False) -> None:
        super().__init__()
        self.on_epoch = bool(on_epoch)
        self.on_batch = bool(on_batch)

    def _condense(self):
        for layer in self.model._flatten_layers(include_self=False, recursive=True):
            if hasattr(layer, "condense") and not isinstance(layer, keras.Model):
                layer.condense()

    def on_train_batch_end(self, batch: int, logs: dict | None = None):
        if self.on_batch:
            self._condense()

    def on_epoch_end(self, epoch: int, logs: dict | None = None):
        if self.on_epoch:
            self._condense()

    def get_config(self) -> dict:
        return {"on_epoch": self.on_epoch, "on_batch": self.on_batch}


def _raw_kernel_singular_values(layer):
    """Singular values of `layer.kernel` reshaped to (-1, kernel.shape[-1]), or None without a kernel."""
    kernel = getattr(layer, "kernel", None)
    if kernel is None:
        return None
    matrix = np.asarray(ops.convert_to_numpy(kernel), dtype=np.float64)
    return np.linalg.svd(matrix.reshape(-1, matrix.shape[-1]), compute_uv=False)


@keras.saving.register_keras_serializable(package="deel_lip_ext")
class MonitorCallback(_ConfiguredCallback):
    """Track the exact singular values of some layers during training.

    For each monitored layer, `<name>_sv_max` and `<name>_sv_min` are added
    to the Keras logs (so `History` and progress bars show them), and, when
    `logdir` is given, written to TensorBoard as scalars plus a histogram of
    the whole spectrum (`what="all"`). With `target="wbar"` (the default) the
    values are the exact singular values of the layer's operator
    (`deel_lip_ext.utils.compute_layer_sv`, constrained kernel, real padding);
    with `target="kernel"` (deel-lip's default) they are the singular values
    of the raw trainable kernel reshaped to a matrix (kernel.shape[-1]
    columns), which shows how far training drifts from the constraint. Layers
    without a `kernel` are skipped for `target="kernel"`.

    Args:
        monitored_layers: names of the layers to monitor.
        logdir: TensorBoard folder, or None (logs only). Writing it needs the
            `tensorboard` package (in the `dev` extra), not TensorFlow: it works on every backend.
        target: "wbar" (constrained operator) or "kernel" (raw weights).
        what: "max" (min/max scalars) or "all" (also a spectrum histogram).
        on_epoch: record at the end of each epoch.
        on_batch: record at the end of each training batch.

    Examples:
        >>> monitor = MonitorCallback(["conv1", "dense"], logdir="logs/sv", what="all")
        >>> history = model.fit(x, y, callbacks=[monitor])
        >>> history.history["conv1_sv_max"]
    """

    def __init__(
        self,
        monitored_layers: Sequence[str],
        logdir: str | None = None,
        target: str = "wbar",
        what: str = "max",
        on_epoch: bool = True,
        on_batch: bool = False,
    ) -> None:
        super().__init__()
        if isinstance(monitored_layers, str) or not monitored_layers:
            raise ValueError(f"monitored_layers must be a non-empty list of layer names, got {monitored_layers!r}.")
        if target not in ("wbar", "kernel"):
            raise ValueError(f"target must be 'wbar' (constrained operator) or 'kernel' (raw weights), got {target!r}.")
        if what not in ("max", "all"):
            raise ValueError(f"what must be 'max' or 'all', got {what!r}.")
        self.monitored_layers = list(monitored_layers)
        self.logdir = logdir
        self.target = target
        self.what = what
        self.on_epoch = bool(on_epoch)
        self.on_batch = bool(on_batch)
        self._writer = None
        self._step = 0

    def set_model(self, model: keras.Model):
        super().set_model(model)
        names = {layer.name for layer in model._flatten_layers(include_self=False, recursive=True)}
        missing = [name for name in self.monitored_layers if name not in names]
        if missing:
            raise ValueError(f"monitored_layers {missing} are not layers of the model (it has {sorted(names)}).")

    def _record(self, logs):
        self._step += 1
        layers = {layer.name: layer for layer in self.model._flatten_layers(include_self=False, recursive=True)}
        for name in self.monitored_layers:
            spectrum = None
            if self.target == "kernel":
                spectrum = _raw_kernel_singular_values(layers[name])
                values = None if spectrum is None else (float(spectrum.min()), float(spectrum.max()))
            else:
                values = compute_layer_sv(layers[name])
            if values is None:
                continue
            if logs is not None:
                logs[f"{name}_sv_min"], logs[f"{name}_sv_max"] = values
            if self.logdir is not None:
                self._write(name, layers[name], values, spectrum)
        if self._writer is not None:
            self._writer.flush()

    def _write(self, name, layer, values, spectrum):
        """TensorBoard scalars (and the spectrum's histogram) of one layer, on every backend."""
        if self._writer is None:
            self._writer = EventWriter(self.logdir, "MonitorCallback(logdir=...)")
        self._writer.scalar(f"{name}/sv_max", values[1], self._step)
        self._writer.scalar(f"{name}/sv_min", values[0], self._step)
        if self.what == "all":
            spectrum = layer_singular_values(layer) if spectrum is None else spectrum
            self._writer.histogram(f"{name}/singular_values", spectrum, self._step)

    def on_train_batch_end(self, batch: int, logs: dict | None = None):
        if self.on_batch:
            self._record(logs)

    def on_epoch_end(self, epoch: int, logs: dict | None = None):
        if self.on_epoch:
            self._record(logs)

    def get_config(self) -> dict:
        return {
            "monitored_layers": self.monitored_layers,
            "logdir": self.logdir,
            "target": self.target,
            "what": self.what,
            "on_epoch": self.on_epoch,
            "on_batch": self.on_batch,
        }


@keras.saving.register_keras_serializable(package="deel_lip_ext")
class SVCMProjection(_ConfiguredCallback):
    """Project every `SVCMConv2D` of the model every N training batches and at the end of each epoch.

    As in the BCOP code: on every batch whose index within the epoch is a
    multiple of `every_n_steps` (after its update) and after the last batch
    of each epoch. The measured norms of the last projection are in
    `self.measured_norms` (layer name -> largest singular value).

    Args:
        every_n_steps: projection period in batches (100 in the BCOP paper).
        on_epoch_end: also project after the last batch of each epoch.

    Examples:
        >>> model.fit(x, y, epochs=10, callbacks=[SVCMProjection(every_n_steps=100)])
    """

    def __init__(self, every_n_steps: int = 100, on_epoch_end: bool = True) -> None:
        super().__init__()
        self.every_n_steps = check_int(every_n_steps, "every_n_steps")
        self.project_on_epoch_end = bool(on_epoch_end)
        self.measured_norms = {}

    def project(self):
        """Project every `SVCMConv2D` of the model now."""
        for layer in self.model._flatten_layers(include_self=False, recursive=True):
            if isinstance(layer, SVCMConv2D) and layer.built:
                self.measured_norms[layer.name] = layer.project()

    def on_train_batch_end(self, batch: int, logs: dict | None = None):
        if batch % self.every_n_steps == 0:
            self.project()

    def on_epoch_end(self, epoch: int, logs: dict | None = None):
        if self.project_on_epoch_end:
            self.project()

    def get_config(self) -> dict:
        return {"every_n_steps": self.every_n_steps, "on_epoch_end": self.project_on_epoch_end}


# ---------------------------------------------------------------- the l_inf-dist norm-order schedule


def schedule_ratio(step: int, steps_per_epoch: int, constant_epochs: float, growth_epochs: float) -> float:
    """r in [0, 1]: 0 during the constant phase, then linear in the step over the growth phase.

    Args:
        step: global training step (batches seen since the start of training).
        steps_per_epoch: batches per epoch.
        constant_epochs: length of the constant phase, in epochs (may be fractional).
        growth_epochs: length of the growth phase, in epochs (<= 0: r jumps to 1 right after the constant phase).

    Returns:
        `clip((step - constant_epochs * steps_per_epoch) / (growth_epochs * steps_per_epoch), 0, 1)`.

    Examples:
        >>> schedule_ratio(150, 100, constant_epochs=1, growth_epochs=1)
        0.5
    """
    growth_steps = max(growth_epochs * steps_per_epoch, 1e-12)
    return float(np.clip((step - constant_epochs * steps_per_epoch) / growth_steps, 0.0, 1.0))


def scheduled_p(ratio: float, p_start: float = 8.0, p_end: float = 1000.0, inf_threshold: float = 100.0) -> float:
    """p = p_start (p_end / p_start) ** r, and inf once r = 1 when p_end >= inf_threshold (the papers' rule).

    Args:
        ratio: the schedule ratio r in [0, 1] (`schedule_ratio`).
        p_start: p at r = 0.
        p_end: p at r = 1, geometric interpolation in between.
        inf_threshold: at r >= 1, p = inf if p_end >= inf_threshold (else p stays p_end).

    Returns:
        p, a float (`math.inf` after the growth).
    """
    if ratio >= 1.0 and p_end >= inf_threshold:
        return math.inf
    return float(p_start * (p_end / p_start) ** ratio)


@keras.saving.register_keras_serializable(package="deel_lip_ext")
class LpScheduler(_ConfiguredCallback):
    """Set p of every l_inf-dist layer before each batch: constant, geometric growth, then inf.

    With r = clip((step - constant_epochs * steps_per_epoch) /
    (growth_epochs * steps_per_epoch), 0, 1), p = p_start (p_end / p_start)
    ** r, and p = inf once r reaches 1 (if p_end >= inf_threshold). v2 MNIST:
    constant 25, growth 375 epochs, then 50 epochs at p = inf.

    Args:
        p_start: p of the first phase (8).
        p_end: p reached at the end of the growth (1000).
        constant_epochs: length of the first phase, in epochs (may be fractional).
        growth_epochs: length of the growth phase, in epochs (> 0).
        steps_per_epoch: batches per epoch; None takes it from `fit`.
        inf_threshold: switch to p = inf after the growth only if p_end >= it.
        followers: objects with `set_progress(ratio)` that follow the same r
            (e.g. `ClippedHingeCrossEntropy`, whose cross-entropy weight decays).
        initial_epoch: the epoch to start from when resuming.

    Examples:
        >>> loss = ClippedHingeCrossEntropy(eps=1.46)
        >>> scheduler = LpScheduler(8, 1000, constant_epochs=25, growth_epochs=375, followers=[loss])
        >>> model.fit(x, y, epochs=450, batch_size=512, callbacks=[scheduler])
    """

    def __init__(
        self,
        p_start: float = 8.0,
        p_end: float = 1000.0,
        constant_epochs: float = 0.0,
        growth_epochs: float = 1.0,
        steps_per_epoch: int | None = None,
        inf_threshold: float = 100.0,
        followers: Sequence[Any] = (),
        initial_epoch: int = 0,
    ) -> None:
        super().__init__()
        self.p_start = check_p(p_start)
        self.p_end = check_p(p_end)
        if math.isinf(self.p_start) or math.isinf(self.p_end):
            raise ValueError(
                f"p_start and p_end must be finite (p = inf comes after the growth), got {p_start!r}, {p_end!r}."
            )
        self.constant_epochs = check_number(constant_epochs, "constant_epochs", minimum=0)
        self.growth_epochs = check_number(growth_epochs, "growth_epochs", minimum=0, strict=True)
        self.steps_per_epoch = check_int(steps_per_epoch, "steps_per_epoch", allow_none=True)
        self.inf_threshold = check_number(inf_threshold, "inf_threshold", minimum=1)
        for follower in followers:
            if not callable(getattr(follower, "set_progress", None)):
                raise ArgumentTypeError(f"every follower needs a set_progress(ratio) method, got {follower!r}.")
        self.followers = list(followers)
        self._epoch = int(initial_epoch)
        self.p = self.p_start

    def ratio_at(self, step: int):
        """The schedule ratio r at a global training step."""
        return schedule_ratio(step, self._steps_per_epoch(), self.constant_epochs, self.growth_epochs)

    def p_at(self, step: int):
        """The norm order at a global training step."""
        return scheduled_p(self.ratio_at(step), self.p_start, self.p_end, self.inf_threshold)

    def _steps_per_epoch(self):
        steps = self.steps_per_epoch or (self.params or {}).get("steps")
        if not steps:
            raise ValueError("LpScheduler needs steps_per_epoch: fit did not report it (pass steps_per_epoch=...).")
        return steps

    def on_epoch_begin(self, epoch: int, logs: dict | None = None):
        self._epoch = epoch

    def on_train_batch_begin(self, batch: int, logs: dict | None = None):
        step = self._epoch * self._steps_per_epoch() + batch
        ratio = self.ratio_at(step)
        self.p = scheduled_p(ratio, self.p_start, self.p_end, self.inf_threshold)
        set_p(self.model, self.p)
        for follower in self.followers:
            follower.set_progress(ratio)

    def on_epoch_end(self, epoch: int, logs: dict | None = None):
        if logs is not None:
            logs["p"] = self.p

    def get_config(self) -> dict:
        config = {
            "p_start": self.p_start,
            "p_end": self.p_end,
            "constant_epochs": self.constant_epochs,
            "growth_epochs": self.growth_epochs,
            "steps_per_epoch": self.steps_per_epoch,
            "inf_threshold": self.inf_threshold,
            "initial_epoch": self._epoch,
        }
        if not self.followers:
            return config
        return config_without(config, "followers", "LpScheduler(..., followers=[<the compiled loss>])")
