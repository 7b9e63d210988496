"""What `vanilla_export` contains, as README.md ("What the export contains") says.

Parametrized layers become stock `Dense`/`Conv2D` (with `CircularPadding2D` or
`InvertibleDownSampling` in front where needed); the library layers without a Keras
equivalent are copied; nothing else of the library remains. The exported `.keras` file
loads in a fresh process after `import deel_lip_ext`.
"""

import inspect
import pathlib
import re
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest

import deel_lip_ext
from deel_lip_ext import layers as lip
from deel_lip_ext import zoo
from deel_lip_ext.layers.base import ParametrizedLayer

ROOT = pathlib.Path(__file__).resolve().parents[1]

# The library layers an export may contain (README.md lists exactly these).
EXPORTED_AS_THEMSELVES = {
    "CircularPadding2D", "Padding2D", "InvertibleDownSampling", "InvertibleUpSampling",
    "GroupSort", "GroupSort2", "FullSort", "MaxMin", "MaxMinHalves", "CReLU",
    "ScaledAveragePooling2D", "ScaledGlobalAveragePooling2D", "ScaledL2NormPooling",
    "ScaledL2NormPooling2D", "ScaledGlobalL2NormPooling2D",
    "Householder", "LInfDistDense", "LInfDistConv2D", "LogitScale",
    "LayerCentering", "LipResidual", "GroupSort2L2NormPooling2D", "ConvGroupSort2Conv2D",
    "DenseGroupSort2Dense",
}  # fmt: skip
# Not parametrized, but exported to stock layers (README.md says so).
EXPORTED_AS_STOCK = {"BatchCentering"}
# Residual layers exported as a functional block of stock layers (README.md says so).
EXPORTED_AS_STOCK_BLOCKS = {"SLLDense", "SLLConv2D", "CPLDense", "CPLConv2D"}
# What a parametrized layer may leave besides its stock Dense/Conv2D.
PARAMETRIZED_HELPERS = {"CircularPadding2D", "Padding2D", "InvertibleDownSampling"}


def _library_layer_classes():
    return {
        name: cls for name, cls in vars(lip).items()
        if inspect.isclass(cls) and issubclass(cls, keras.layers.Layer) and not inspect.isabstract(cls)
        and cls is not ParametrizedLayer and not name.startswith("_")
    }  # fmt: skip


def _exported_classes(model):
    plain = model.vanilla_export() if hasattr(model, "vanilla_export") else deel_lip_ext.vanillaModel(model)
    names = set()

    def walk(layer):
        if isinstance(layer, keras.Model):
            for sub in layer.layers:
                walk(sub)
        else:
            names.add((type(layer).__module__, type(layer).__name__))

    walk(plain)
    return plain, names


def test_every_library_layer_is_either_parametrized_or_listed():
    """A layer that is not parametrized is exported as itself: it must be in the README's list."""
    unlisted = [
        name for name, cls in _library_layer_classes().items()
        if not issubclass(cls, ParametrizedLayer)
        and name not in EXPORTED_AS_THEMSELVES | EXPORTED_AS_STOCK | EXPORTED_AS_STOCK_BLOCKS
        and cls.__name__ not in ("LipschitzLayer",)
    ]  # fmt: skip
    assert not unlisted, f"layers exported as themselves but missing from README's list: {unlisted}"


def test_readme_lists_exactly_the_layers_an_export_may_contain():
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## What the export contains", 1)[1].split("\n## ", 1)[0]
    copied = section.split("copied as they are", 1)[1].split("So a `.keras`", 1)[0]
    assert set(re.findall(r"`(\w+)`", copied)) == EXPORTED_AS_THEMSELVES
    parametrized = {name for name, cls in _library_layer_classes().items() if issubclass(cls, ParametrizedLayer)}
    listed = set(re.findall(r"`(\w+)`", section.split("becomes a stock", 1)[0]))
    assert parametrized <= listed, parametrized - listed


def _models():
    x = keras.Input((8, 8, 2))
    yield "sequential", deel_lip_ext.Sequential([
        keras.Input((8, 8, 2)),
        lip.SpectralConv2D(4, 3, padding="circular"), lip.GroupSort2(),
        lip.FrobeniusConv2D(4, 3, padding="same"), lip.MaxMin(), lip.ScaledL2NormPooling2D(),
        lip.InvertibleDownSampling(2), lip.FullSort(), lip.ScaledGlobalL2NormPooling2D(),
        lip.SpectralDense(6), lip.Householder(), lip.FrobeniusDense(6), lip.CReLU(), lip.BjorckDense(3),
    ])  # fmt: skip
    h = lip.SpectralConv2D(4, 3, padding="valid")(x)
    h = lip.GroupSort(n=2)(h)
    h = lip.ScaledAveragePooling2D()(h)
    h = keras.layers.Flatten()(h)
    yield "functional", deel_lip_ext.Model(x, lip.SpectralDense(2)(h))
    for conv in ("bcop", "rko", "ossn", "svcm"):
        yield f"kw_small_{conv}", zoo.kw_small(conv, (8, 8, 1), 3)
    yield "liresnet", zoo.liresnet((8, 8, 1), 3, width=4, depth=2, neck_filters=4, dense_width=4)
    yield "sll_net", zoo.sll_net((8, 8, 1), 3, width=2, depth=1)
    yield (
        "modern_functional",
        deel_lip_ext.Model(
            x,
            lip.CPLDense(3)(
                keras.layers.Flatten()(
                    lip.CPLConv2D(2, 3, padding="circular")(lip.AOLConv2D(2, 3, padding="circular")(x))
                )
            ),
        ),
    )


@pytest.mark.parametrize("name, model", list(_models()), ids=lambda value: value if isinstance(value, str) else "")
def test_export_holds_stock_layers_and_only_the_listed_library_layers(name, model):
    plain, classes = _exported_classes(model)
    library = {cls for module, cls in classes if module.startswith("deel_lip_ext")}
    foreign = {f"{module}.{cls}" for module, cls in classes if not module.startswith(("deel_lip_ext", "keras"))}
    assert not foreign, foreign
    assert library <= EXPORTED_AS_THEMSELVES, library - EXPORTED_AS_THEMSELVES
    assert not any(issubclass(getattr(lip, cls), ParametrizedLayer) for cls in library)
    stock = {cls for module, cls in classes if module.startswith("keras")}
    assert stock & {"Dense", "Conv2D"}, stock
    x = np.random.default_rng(0).random((3,) + tuple(model.input_shape[1:])).astype("float32")
    np.testing.assert_allclose(keras.ops.convert_to_numpy(plain(x)), keras.ops.convert_to_numpy(model(x)), atol=1e-5)


def test_exported_keras_file_loads_in_a_fresh_process_after_import_deel_lip_ext(tmp_path):
    model = next(model for name, model in _models() if name == "sequential")
    plain = model.vanilla_export()
    plain.save(tmp_path / "export.keras")
    x = np.random.default_rng(1).random((4, 8, 8, 2)).astype("float32")
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "y.npy", keras.ops.convert_to_numpy(plain(x)))
    code = textwrap.dedent(
        """
        import numpy as np, keras
        import deel_lip_ext
        loaded = keras.saving.load_model("export.keras")
        np.testing.assert_allclose(keras.ops.convert_to_numpy(loaded(np.load("x.npy"))), np.load("y.npy"), atol=1e-6)
        print("ok")
        """
    )
    completed = subprocess.run(
        [sys.executable, "-c", code],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=600,
        env={**__import__("os").environ, "PYTHONPATH": str(ROOT), "TF_CPP_MIN_LOG_LEVEL": "3"},
    )
    assert completed.returncode == 0 and "ok" in completed.stdout, completed.stderr[-3000:]


def test_export_keeps_the_weights_of_the_layers_it_copies():
    """Householder's trained angles are weights: an export with fresh angles would compute
    another function (it did before the export copied them)."""
    model = deel_lip_ext.Sequential([keras.Input((4,)), lip.SpectralDense(4), lip.Householder()])
    model.layers[-1].theta.assign(np.array([0.3, 1.1], "float32"))
    plain = model.vanilla_export()
    exported = plain.layers[-1]
    assert type(exported).__name__ == "Householder" and exported is not model.layers[-1]
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(exported.theta), np.float32([0.3, 1.1]))
    x = np.random.default_rng(2).normal(size=(5, 4)).astype("float32")
    np.testing.assert_allclose(keras.ops.convert_to_numpy(plain(x)), keras.ops.convert_to_numpy(model(x)), atol=1e-6)


def test_layers_exported_as_stock_leave_only_stock_layers_and_are_in_the_readme():
    readme = (ROOT / "README.md").read_text().split("## What the export contains", 1)[1].split("\n## ", 1)[0]
    for name in EXPORTED_AS_STOCK:
        assert f"`{name}` becomes a stock" in readme
        layer = getattr(lip, name)()
        layer(np.zeros((2, 3, 3, 4), "float32"))
        assert all(type(plain).__module__.startswith("keras") for plain in layer.vanilla_export())
