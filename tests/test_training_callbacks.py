import keras
import numpy as np
import pytest

from deel_lip_ext import layers as lip
from deel_lip_ext.callbacks import CondenseCallback, MonitorCallback
from deel_lip_ext.model import Sequential
from deel_lip_ext.utils import compute_layer_sv, layer_singular_values


def _model():
    model = Sequential(
        [
            keras.Input((6, 6, 1)),
            lip.SpectralConv2D(4, 3, padding="circular", name="conv"),
            lip.GroupSort2(),
            keras.layers.Flatten(),
            lip.SpectralDense(3, name="dense", kernel_initializer="glorot_uniform"),
        ]
    )
    model.compile(keras.optimizers.Adam(1e-2), "mse")
    return model


def _data():
    rng = np.random.default_rng(0)
    return rng.normal(size=(32, 6, 6, 1)).astype("float32"), rng.normal(size=(32, 3)).astype("float32")


def test_monitor_callback_logs_exact_singular_values(tmp_path):
    model = _model()
    x, y = _data()
    monitor = MonitorCallback(["conv", "dense"], logdir=str(tmp_path / "tb"), what="all")
    history = model.fit(x, y, epochs=2, batch_size=16, verbose=0, callbacks=[monitor])
    assert len(history.history["dense_sv_max"]) == 2
    lo, hi = compute_layer_sv(model.get_layer("conv"))
    assert history.history["conv_sv_max"][-1] == pytest.approx(hi, rel=1e-6)
    assert history.history["conv_sv_min"][-1] == pytest.approx(lo, rel=1e-6)
    assert 0.99 < history.history["dense_sv_max"][-1] <= 1 + 1e-3
    events = _tensorboard_events(tmp_path / "tb")
    assert [step for step, _ in events["conv/sv_max"]] == [1, 2]
    assert events["conv/sv_max"][-1][1] == pytest.approx(hi, rel=1e-6)
    assert events["dense/sv_min"][-1][1] == pytest.approx(history.history["dense_sv_min"][-1], rel=1e-6)
    histogram = events["conv/singular_values"][-1][1]
    assert histogram.num == np.asarray(layer_singular_values(model.get_layer("conv"))).size
    assert histogram.max == pytest.approx(hi, rel=1e-6) and histogram.min == pytest.approx(lo, rel=1e-6)


def _tensorboard_events(logdir):
    """{tag: [(step, scalar or HistogramProto)]}: the event files' records, read with TensorBoard's own reader."""
    loader = pytest.importorskip("tensorboard.backend.event_processing.event_file_loader")
    event_pb2 = pytest.importorskip("tensorboard.compat.proto.event_pb2")
    events = {}
    for path in sorted(logdir.iterdir()):
        for record in loader.RawEventFileLoader(str(path)).Load():
            event = event_pb2.Event.FromString(record)
            for value in event.summary.value:
                content = value.histo if value.HasField("histo") else value.simple_value
                events.setdefault(value.tag, []).append((event.step, content))
    return events


def test_monitor_callback_rejects_unknown_layers_and_options():
    model = _model()
    x, y = _data()
    with pytest.raises(ValueError, match="monitored_layers"):
        model.fit(x, y, epochs=1, verbose=0, callbacks=[MonitorCallback(["nope"])])
    with pytest.raises(ValueError, match="what"):
        MonitorCallback(["conv"], what="median")


def test_condense_callback_makes_raw_kernels_constrained_and_keeps_outputs():
    model = _model()
    x, y = _data()
    model.fit(x, y, epochs=1, batch_size=16, verbose=0, callbacks=[CondenseCallback(on_epoch=True)])
    dense = model.get_layer("dense")
    raw = keras.ops.convert_to_numpy(dense.kernel)
    np.testing.assert_allclose(raw, keras.ops.convert_to_numpy(dense.effective_kernel()), atol=1e-4)
    np.testing.assert_allclose(np.linalg.svd(raw, compute_uv=False), 1.0, atol=1e-3)
    before = model.predict(x, verbose=0)
    CondenseCallback().set_model(model)
    model.condense()
    np.testing.assert_allclose(model.predict(x, verbose=0), before, atol=1e-4)
