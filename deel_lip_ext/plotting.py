"""Singular-value histograms of Lipschitz layers (the BCOP paper's Figure 2).

BCOP keeps every singular value of a convolution at 1; RKO and OSSN push
many of them towards 0, which attenuates gradients. `plot_singular_values`
draws the spectra of one layer before and after training (or of several
layers) as overlaid histograms and saves a PNG through matplotlib's Agg
canvas (no display needed, pyplot's global backend untouched).
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:  # annotations only: plotting does not need Keras at import time
    import keras

from deel_lip_ext._optional import optional_import
from deel_lip_ext.utils import layer_singular_values

__all__ = ["layer_spectrum", "plot_singular_values"]


def layer_spectrum(layer: keras.layers.Layer) -> np.ndarray:
    """All singular values of a layer's linear operator at its real input size (numpy float64).

    `deel_lip_ext.utils.layer_singular_values`: the BCOP-paper convolutions
    are exact after their downsampling, other Dense/Conv2D-like layers exact
    on small inputs.

    Args:
        layer: a built Dense/Conv2D-like layer (stock or of deel-lip-ext), taken at the input shape it was built with.

    Returns:
        A numpy float64 array of the singular values.

    Examples:
        >>> before = layer_spectrum(model.get_layer("conv1"))
    """
    return np.asarray(layer_singular_values(layer), dtype=np.float64)


def plot_singular_values(
    spectra: dict[str, Any],
    path: str | os.PathLike,
    bins: int = 50,
    title: str | None = None,
    value_range: tuple[float, float] | None = None,
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Save overlaid histograms of singular values to a PNG file.

    Args:
        spectra: dict label -> singular values (array-like) or a built layer
            (its `layer_spectrum` is taken now), e.g.
            `{"before training": before, "after training": layer}`.
        path: output file (PNG).
        bins: number of histogram bins, shared by all spectra.
        title: figure title.
        value_range: (low, high) of the bins; default: [0, max(1, largest value)].

    Returns:
        dict label -> (counts, bin_edges) of the plotted histograms.

    Examples:
        >>> before = layer_spectrum(conv)
        >>> model.fit(x, y, epochs=5)
        >>> plot_singular_values({"before": before, "after": conv}, "bcop_spectrum.png")
    """
    # A bare Figure on an Agg canvas: no pyplot state, the user's backend is left alone.
    figure = optional_import("matplotlib.figure", "plot_singular_values")
    canvas = optional_import("matplotlib.backends.backend_agg", "plot_singular_values")

    if not isinstance(spectra, dict) or not spectra:
        raise ValueError(
            f"spectra must be a non-empty dict label -> singular values or layer, got {type(spectra).__name__}."
        )
    values = {
        str(label): (layer_spectrum(item) if hasattr(item, "built") else np.asarray(item, dtype=np.float64).ravel())
        for label, item in spectra.items()
    }
    for label, array in values.items():
        if array.size == 0 or not np.all(np.isfinite(array)) or np.any(array < 0):
            raise ValueError(f"spectra[{label!r}] must be non-empty, finite and >= 0.")
    if value_range is None:
        value_range = (0.0, max(1.0, max(float(array.max()) for array in values.values())) * 1.02)
    edges = np.linspace(value_range[0], value_range[1], bins + 1)

    fig = figure.Figure(figsize=(6, 4))
    canvas.FigureCanvasAgg(fig)
    axis = fig.add_subplot()
    histograms = {}
    for label, array in values.items():
        counts, _, _ = axis.hist(array, bins=edges, alpha=0.55, label=f"{label} (n={array.size})")
        histograms[label] = (counts, edges)
    axis.set_xlabel("singular value")
    axis.set_ylabel("count")
    if title:
        axis.set_title(title)
    axis.legend()
    fig.tight_layout()
    fig.savefig(path, format="png", dpi=150)
    return histograms
