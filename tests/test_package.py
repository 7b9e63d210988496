"""`import deel_lip_ext` alone: every submodule, deel-lip's top-level names, `.keras` loading.

The loading tests run in fresh subprocesses, because this test process has imported the
submodules already (which registers their classes and would hide a missing import).
"""

import ast
import importlib
import pathlib
import pkgutil
import importlib.util
import re
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest

import deel_lip_ext

ROOT = pathlib.Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "deel_lip_ext"


def _all_modules():
    return [module.name for module in pkgutil.walk_packages(deel_lip_ext.__path__, prefix="deel_lip_ext.")]


def _run_python(code, cwd, backend=None):
    env_code = "import os; os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '3')\n" + textwrap.dedent(code)
    env = {**__import__("os").environ, "PYTHONPATH": str(ROOT)}
    if backend:
        env["KERAS_BACKEND"] = backend
    completed = subprocess.run(
        [sys.executable, "-c", env_code], cwd=cwd, capture_output=True, text=True, timeout=600, env=env
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    return completed.stdout


def test_every_public_submodule_is_an_attribute_of_the_package():
    public = [name for name in _all_modules() if name.count(".") == 1 and not name.split(".")[-1].startswith("_")]
    assert len(public) >= 16
    missing = [name for name in public if not hasattr(deel_lip_ext, name.split(".")[-1])]
    assert not missing, f"`import deel_lip_ext` does not import: {missing}"
    for name in public:
        assert getattr(deel_lip_ext, name.split(".")[-1]) is importlib.import_module(name)


def test_deel_lip_top_level_names():
    from deel_lip_ext import model

    assert deel_lip_ext.Sequential is model.Sequential and deel_lip_ext.Model is model.Model
    assert deel_lip_ext.vanillaModel is model.vanilla_model
    assert set(deel_lip_ext.__all__) >= {"Sequential", "Model", "vanillaModel", "layers", "losses"}


def test_keras_file_loads_in_a_fresh_process_after_only_import_deel_lip_ext(tmp_path):
    _run_python(
        """
        import keras, numpy as np
        from deel_lip_ext.model import Sequential
        from deel_lip_ext.layers import SpectralDense, SpectralConv2D, GroupSort2, ScaledL2NormPooling2D
        from deel_lip_ext.losses import MulticlassHKR
        model = Sequential([
            keras.Input((8, 8, 1)),
            SpectralConv2D(4, 3, padding="same"), GroupSort2(), ScaledL2NormPooling2D(),
            keras.layers.Flatten(), SpectralDense(3),
        ])
        model.compile(optimizer="adam", loss=MulticlassHKR(alpha=10.0, min_margin=0.5))
        x = np.random.default_rng(0).random((5, 8, 8, 1)).astype("float32")
        model.fit(x, np.eye(3, dtype="float32")[[0, 1, 2, 0, 1]], epochs=1, verbose=0)
        model.save("m.keras")
        np.save("x.npy", x)
        np.save("y.npy", model.predict(x, verbose=0))
        """,
        tmp_path,
    )
    out = _run_python(
        """
        import sys, keras, numpy as np
        import deel_lip_ext
        loaded = keras.saving.load_model("m.keras")
        assert type(loaded) is deel_lip_ext.Sequential, type(loaded)
        assert type(loaded.loss).__name__ == "MulticlassHKR", loaded.loss
        np.testing.assert_allclose(loaded.predict(np.load("x.npy"), verbose=0), np.load("y.npy"), atol=1e-5)
        print("loaded", [type(layer).__name__ for layer in loaded.layers])
        """,
        tmp_path,
    )
    assert "loaded ['SpectralConv2D', 'GroupSort2'" in out


# An import cycle shows whatever the backend; JAX imports in a fraction of TensorFlow's time.
_IMPORT_BACKEND = "jax" if importlib.util.find_spec("jax") else None


@pytest.mark.slow  # one fresh interpreter (and Keras import) per module
@pytest.mark.parametrize("name", _all_modules())
def test_each_submodule_imports_alone_in_a_fresh_process(name, tmp_path):
    _run_python(f"import {name}", tmp_path, backend=_IMPORT_BACKEND)


def test_no_module_imports_tensorflow_at_import_time():
    """TensorFlow is imported inside the functions that need it (tf.data, SavedModel,
    gradients) or in a `try: ... except ImportError`, never unconditionally at module level,
    so the package imports on the JAX and torch backends without TensorFlow installed."""
    offenders = []
    for path in PACKAGE.rglob("*.py"):
        tree = ast.parse(path.read_text())
        for node in tree.body:
            if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
                continue
            if isinstance(node, ast.Try) and any(
                "ImportError" in ast.unparse(handler.type or ast.Name("")) for handler in node.handlers
            ):
                continue  # an optional import: `tf = None` when TensorFlow is not installed
            for child in ast.walk(node) if not isinstance(node, (ast.FunctionDef, ast.ClassDef)) else ():
                if isinstance(child, ast.Import):
                    names = [alias.name for alias in child.names]
                elif isinstance(child, ast.ImportFrom):
                    names = [child.module or ""]
                else:
                    continue
                if any(n == "tensorflow" or n.startswith("tensorflow.") for n in names):
                    offenders.append(f"{path.relative_to(ROOT)}:{child.lineno}")
    assert not offenders, f"module-level tensorflow imports: {offenders}"


def test_package_ships_py_typed():
    assert (PACKAGE / "py.typed").is_file()
    setup_cfg = (ROOT / "setup.cfg").read_text()
    assert "[options.package_data]" in setup_cfg and "py.typed" in setup_cfg.split("[options.package_data]")[1]


def test_vanilla_model_is_callable_as_deel_lip_names_it():
    model = deel_lip_ext.Sequential([keras.Input((4,)), deel_lip_ext.layers.SpectralDense(2)])
    plain = deel_lip_ext.vanillaModel(model)
    x = np.random.default_rng(1).random((3, 4)).astype("float32")
    np.testing.assert_allclose(keras.ops.convert_to_numpy(plain(x)), keras.ops.convert_to_numpy(model(x)), atol=1e-5)


def _canonical(name):
    return re.sub(r"[-_.]+", "-", name).lower()


def _unconditional(requirements):
    """Distribution names of requirement strings that pip installs without any extra."""
    from packaging.requirements import Requirement

    parsed = [Requirement(line) for line in requirements if line.strip() and not line.strip().startswith("#")]
    return [_canonical(req.name) for req in parsed if req.marker is None or req.marker.evaluate({"extra": ""})]


def _installed_by(names):
    """`names` and every distribution they require, transitively (as installed here)."""
    from importlib import metadata

    seen, pending = set(), list(names)
    while pending:
        name = pending.pop()
        if name in seen:
            continue
        seen.add(name)
        try:
            pending.extend(_unconditional(metadata.requires(name) or []))
        except metadata.PackageNotFoundError:
            pass
    return seen


def _top_level_imports(path):
    """Top-level module names a file imports unconditionally (module body, not in functions or try blocks)."""
    names = set()
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


def test_tests_and_demos_import_only_what_the_dev_extra_installs():
    # The README's `pip install -e ".[dev]" && pytest` on a fresh machine: a test module importing a
    # package that only another backend pulls in (scipy, with JAX) fails to collect there.
    import configparser
    from importlib import metadata

    config = configparser.ConfigParser()
    config.read(ROOT / "setup.cfg")
    options = config["options"]["install_requires"].splitlines()
    dev = config["options.extras_require"]["dev"].splitlines()
    installed = _installed_by(_unconditional(options) + _unconditional(dev) + ["deel-lip-ext"])
    files = [*ROOT.glob("tests/*.py"), *ROOT.glob("tests/audit_probes/*.py"), *ROOT.glob("demos/*.py")]
    local = {path.stem for path in files} | {"deel_lip_ext"}
    distributions = metadata.packages_distributions()
    missing = {
        f"{path.relative_to(ROOT)}: {module}"
        for path in files
        for module in _top_level_imports(path) - local - set(sys.stdlib_module_names)
        if not any(_canonical(dist) in installed for dist in distributions.get(module, []))
    }
    assert not missing, sorted(missing)
