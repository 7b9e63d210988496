"""Keras callbacks for Lipschitz training (deel-lip's names)."""

import numpy as np
import keras
from keras import ops

__all__ = ["LossParamScheduler", "LossParamLog"]


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
class LossParamScheduler(keras.callbacks.Callback):
    """Set a loss hyper-parameter to np.interp(step, xp, fp) before every training batch.

    Args:
        param_name: name of the loss attribute, e.g. "alpha", "min_margin", "tau".
        fp: values of the parameter at the steps `xp`.
        xp: increasing training steps (batches) at which the values are reached;
            constant before the first and after the last.
        step: the step the schedule starts from (to resume training).

    Example:
        >>> model.compile(optimizer="adam", loss=MulticlassHKR(alpha=10.0))
        >>> model.fit(x, y, callbacks=[LossParamScheduler("alpha", fp=[10.0, 50.0], xp=[0, 1000])])
    """

    def __init__(self, param_name, fp, xp, step=0):
        super().__init__()
        fp = np.asarray(fp, dtype="float64")
        xp = np.asarray(xp, dtype="float64")
        if fp.ndim != 1 or fp.shape != xp.shape or fp.size == 0:
            raise ValueError(f"fp and xp must be 1-D of the same non-zero length, got shapes {fp.shape} and {xp.shape}.")
        if np.any(np.diff(xp) < 0):
            raise ValueError(f"xp must be increasing, got {xp.tolist()}.")
        self.param_name = param_name
        self.fp = fp.tolist()
        self.xp = xp.tolist()
        self.step = int(step)

    def value_at(self, step):
        """The scheduled value at a training step."""
        return float(np.interp(step, self.xp, self.fp))

    def on_train_batch_begin(self, batch, logs=None):
        _loss_parameter(self.model, self.param_name).assign(self.value_at(self.step))
        self.step += 1

    def get_config(self):
        return {"param_name": self.param_name, "fp": self.fp, "xp": self.xp, "step": self.step}


@keras.saving.register_keras_serializable(package="deel_lip_ext")
class LossParamLog(keras.callbacks.Callback):
    """Print a loss hyper-parameter every `rate` epochs (and store it in `logs`).

    Args:
        param_name: name of the loss attribute, e.g. "alpha".
        rate: print every `rate` epochs.

    Example:
        >>> model.fit(x, y, epochs=10, callbacks=[LossParamLog("alpha", rate=2)])
    """

    def __init__(self, param_name, rate=1):
        super().__init__()
        if isinstance(rate, bool) or not isinstance(rate, int) or rate < 1:
            raise ValueError(f"rate must be a positive integer, got {rate!r}.")
        self.param_name = param_name
        self.rate = rate

    def on_epoch_end(self, epoch, logs=None):
        value = float(ops.convert_to_numpy(_loss_parameter(self.model, self.param_name)))
        if logs is not None:
            logs[self.param_name] = value
        if epoch % self.rate == 0:
            print(f"\nepoch {epoch}: loss parameter {self.param_name} = {value:.6g}")

    def get_config(self):
        return {"param_name": self.param_name, "rate": self.rate}
