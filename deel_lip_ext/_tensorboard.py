"""TensorBoard event files on every Keras backend, through the `tensorboard` package alone.

`tf.summary` (and Keras's own TensorBoard callback, which uses it) needs TensorFlow; the
`tensorboard` package writes the same event files (scalars, histograms) with its bundled protocol
buffers and numpy, so JAX and torch users need no TensorFlow to log to TensorBoard.
"""

from __future__ import annotations

import time

import numpy as np
from numpy.typing import ArrayLike

from deel_lip_ext._optional import optional_import

__all__ = ["EventWriter"]


class EventWriter:
    """Writes scalars and histograms to a TensorBoard log folder (an `events.out.tfevents.*` file).

    Args:
        logdir: the folder (created when missing).
        feature: what writes, named in the ImportError when `tensorboard` is not installed.

    Raises:
        ImportError: naming `feature` and `pip install tensorboard` when the package is missing.

    Examples:
        >>> writer = EventWriter("logs/sv", "MonitorCallback(logdir=...)")
        >>> writer.scalar("dense/sv_max", 1.0, step=1)
        >>> writer.histogram("dense/singular_values", np.array([0.5, 1.0]), step=1)
        >>> writer.flush()
    """

    def __init__(self, logdir: str, feature: str) -> None:
        files = optional_import("tensorboard.summary.writer.event_file_writer", feature)
        self._events = optional_import("tensorboard.compat.proto.event_pb2", feature)
        self._summaries = optional_import("tensorboard.compat.proto.summary_pb2", feature)
        self._file = files.EventFileWriter(str(logdir))

    def _write(self, value, step: int) -> None:
        summary = self._summaries.Summary(value=[value])
        self._file.add_event(self._events.Event(summary=summary, step=int(step), wall_time=time.time()))

    def scalar(self, tag: str, value: float, step: int) -> None:
        """Adds `value` to the scalar series `tag` at `step`."""
        self._write(self._summaries.Summary.Value(tag=tag, simple_value=float(value)), step)

    def histogram(self, tag: str, values: ArrayLike, step: int, bins: int = 30) -> None:
        """Adds the distribution of `values` (any shape) to the histogram series `tag` at `step`."""
        values = np.asarray(values, dtype=np.float64).ravel()
        counts, edges = np.histogram(values, bins=bins)
        histogram = self._summaries.HistogramProto(
            min=float(values.min()),
            max=float(values.max()),
            num=float(values.size),
            sum=float(values.sum()),
            sum_squares=float(np.sum(values**2)),
            bucket_limit=[float(edge) for edge in edges[1:]],
            bucket=[float(count) for count in counts],
        )
        self._write(self._summaries.Summary.Value(tag=tag, histo=histogram), step)

    def flush(self) -> None:
        """Writes what is buffered to the file."""
        self._file.flush()
