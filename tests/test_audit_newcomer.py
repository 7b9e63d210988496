"""Independent audit of a newcomer's first hour (issue 17): checks the existing tests do not make.

- the README's own "In 15 lines" example runs as written (only the data size and epochs cut);
- the README says how to get `mkdocs` before it says `mkdocs serve`;
- `--download` that fails (no network, or a broken tensorflow-datasets) ends in a message, not a traceback;
- no TensorFlow retracing warnings from the library's own functions (the demos print them);
- the API pages render their formulas (no raw `_{...}` TeX-like text outside code).

A library defect is an `xfail(strict=True)` naming it (it turns red the day it is fixed).
"""

import importlib.util
import io
import logging
import os
import pathlib
import re
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest
from conftest import data_available

ROOT = pathlib.Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def _readme_python_blocks():
    return re.findall(r"```python\n(.*?)```", README, flags=re.DOTALL)


# ----------------------------------------------------------------------------- README


def test_readme_installs_the_docs_extra_before_mkdocs():
    """`mkdocs` is only in the `docs` extra; the README's install line installs `dev`."""
    position = README.find("mkdocs serve")
    assert position >= 0
    assert '.[docs]"' in README[:position] or ".[dev,docs]" in README[:position], "mkdocs is never installed"


@pytest.mark.slow
@pytest.mark.skipif(not data_available("mnist"), reason="mnist.npz not in $DEEL_LIP_EXT_DATA")
def test_readme_example_runs_as_written(tmp_path):
    """The README's 15-line example, with 1 epoch on 1024 images instead of 3 on 60000."""
    (block,) = [block for block in _readme_python_blocks() if "certify(" in block]
    assert 'load_numpy("mnist")' in block and "epochs=3" in block
    code = block.replace('load_numpy("mnist")', 'load_numpy("mnist", num_train=1024, num_test=256)').replace(
        "epochs=3", "epochs=1"
    )
    completed = subprocess.run(
        [sys.executable, "-c", code],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=1200,
        env={**os.environ, "PYTHONPATH": str(ROOT), "TF_CPP_MIN_LOG_LEVEL": "3"},
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    assert "certified" in completed.stdout.lower() or "0.5" in completed.stdout, completed.stdout[-2000:]
    assert (tmp_path / "mnist_lipschitz" / "saved_model.pb").is_file()
    # `verbose=False`: no SavedModel capture list on stdout.
    assert "Captures:" not in completed.stdout


# ----------------------------------------------------------------------------- --download that fails

_FAKE_TFDS = '''
"""Stands for a tensorflow-datasets that cannot download (offline, or a missing dependency)."""
def builder(*args, **kwargs):
    raise ModuleNotFoundError("No module named 'importlib_resources'")
def load(*args, **kwargs):
    raise ModuleNotFoundError("No module named 'importlib_resources'")
'''

_RUN_WITH_FAILING_DOWNLOAD = """
import pathlib, runpy, sys
import keras
import deel_lip_ext.datasets as datasets
datasets.CHECKOUT_SHARED_DATA = pathlib.Path(sys.argv[1])  # no checkout copies
def offline(*args, **kwargs):
    raise Exception("URL fetch failure on https://storage.googleapis.com/...: None -- [Errno -3] no network")
keras.datasets.mnist.load_data = offline
sys.argv = [sys.argv[2], "--quick", "--download", "--output-dir", sys.argv[3]]
sys.path.insert(0, str(pathlib.Path(sys.argv[0]).parent))
runpy.run_path(sys.argv[0], run_name="__main__")
"""


def test_failing_download_prints_a_message_and_no_traceback(tmp_path):
    fake = tmp_path / "fake_site"
    (fake / "tensorflow_datasets").mkdir(parents=True)
    (fake / "tensorflow_datasets" / "__init__.py").write_text(_FAKE_TFDS)
    empty = tmp_path / "empty"
    empty.mkdir()
    env = dict(
        os.environ,
        MPLBACKEND="Agg",
        TF_CPP_MIN_LOG_LEVEL="3",
        PYTHONPATH=os.pathsep.join([str(fake), str(ROOT)]),
        DEEL_LIP_EXT_DATA="",
        KERAS_HOME=str(empty / "keras"),
        TFDS_DATA_DIR=str(empty / "tfds"),
    )
    completed = subprocess.run(
        [
            sys.executable,
            "-c",
            _RUN_WITH_FAILING_DOWNLOAD,
            str(empty / "shared"),
            str(ROOT / "demos" / "certified_mnist.py"),
            str(tmp_path / "out"),
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert completed.returncode != 0
    output = completed.stdout + completed.stderr
    assert "Traceback" not in output, completed.stderr[-3000:]
    assert "--data-dir" in completed.stderr  # the way out that needs no network


# ----------------------------------------------------------------------------- TensorFlow retracing warnings


def _tensorflow_warnings(run):
    """What TensorFlow logs while `run()` runs, with its retracing counts started afresh.

    TensorFlow counts traces per function *code*: the compiled functions the library builds per
    model share one count, so traces of earlier tests in this process (one per model, as designed)
    would add to this test's and trip the warning, depending on which tests ran before.
    """
    from tensorflow.python.eager.polymorphic_function import polymorphic_function

    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    logger = logging.getLogger("tensorflow")
    logger.addHandler(handler)
    counts = polymorphic_function._frequent_tracing_detector_manager
    polymorphic_function._frequent_tracing_detector_manager = type(counts)()
    try:
        run()
    finally:
        polymorphic_function._frequent_tracing_detector_manager = counts
        logger.removeHandler(handler)
    return stream.getvalue()


def test_evaluate_lip_const_prints_no_retracing_warning():
    from deel_lip_ext.layers import GroupSort2, SpectralDense
    from deel_lip_ext.utils import evaluate_lip_const

    x = np.random.default_rng(0).normal(size=(70, 6)).astype("float32")
    models = [keras.Sequential([keras.Input((6,)), SpectralDense(8), GroupSort2(), SpectralDense(3)]) for _ in range(4)]
    log = _tensorflow_warnings(lambda: [evaluate_lip_const(model, x, batch_size=32) for model in models])
    assert "retracing" not in log, log[:1000]


def test_certify_ibp_prints_no_retracing_warning():
    from deel_lip_ext import linf
    from deel_lip_ext.zoo import linf_dist_net

    rng = np.random.default_rng(1)
    x = rng.random((50, 28, 28, 1)).astype("float32")
    y = rng.integers(0, 10, 50)
    model = linf_dist_net(depth=3, width=32)
    linf.set_p(model, float("inf"))
    log = _tensorflow_warnings(
        lambda: [linf.certify_ibp(model, x, y, eps, batch_size=32) for eps in np.linspace(0, 0.6, 7)]
    )
    assert "retracing" not in log, log[:1000]


# ----------------------------------------------------------------------------- formulas on the API pages


@pytest.mark.slow  # a full site build
@pytest.mark.skipif(importlib.util.find_spec("mkdocs") is None, reason="mkdocs is not installed (.[docs])")
def test_api_pages_have_no_raw_tex_outside_code(tmp_path):
    completed = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    raw, math_pages = {}, set()
    for page in sorted((tmp_path / "site" / "api").glob("*/index.html")):
        html = page.read_text()
        # MathJax is served by the site itself (no CDN), so the formulas render offline.
        scripts = re.findall(r'<script[^>]*src="([^"]*)"', html)
        assert not [src for src in scripts if "mathjax" in src.lower() and "//" in src], scripts
        assert any(src.endswith("javascripts/mathjax/tex-svg-full.js") for src in scripts), scripts
        # TeX inside arithmatex's spans is typeset by MathJax: only TeX outside them is raw.
        formulas = re.findall(r'<(span|div) class="arithmatex">(.*?)</\1>', html, flags=re.DOTALL)
        if formulas:
            math_pages.add(page.parent.name)
        html = re.sub(r'<(span|div) class="arithmatex">.*?</\1>', "", html, flags=re.DOTALL)
        html = re.sub(r"<(pre|code)[^>]*>.*?</\1>", "", html, flags=re.DOTALL)
        text = re.sub(r"<[^>]+>", "", html)
        hits = re.findall(r"\S*(?:_\{|\^\{)\S*", text)
        if hits:
            raw[page.parent.name] = hits[:3]
    assert not raw, textwrap.shorten(str(raw), 1000)
    # The formulas the audit found raw now go through arithmatex.
    expected = {"losses", "metrics", "certification", "attacks", "regularization", "aoc", "modern_layers", "spectrum"}
    assert expected <= math_pages, expected - math_pages
    assert (tmp_path / "site" / "javascripts" / "mathjax" / "tex-svg-full.js").stat().st_size > 1_000_000


# ----------------------------------------------------------------------------- type hints


def _public_callables():
    """(qualified name, object, the function whose parameters it takes) of every public class with its own
    `__init__` and every public function, in the module that defines it."""
    import importlib
    import inspect
    import pkgutil

    import deel_lip_ext

    for info in pkgutil.walk_packages(deel_lip_ext.__path__, prefix="deel_lip_ext."):
        if any(part.startswith("_") for part in info.name.split(".")[1:]):
            continue
        module = importlib.import_module(info.name)
        for name in getattr(module, "__all__", ()):
            obj = getattr(module, name)
            if getattr(obj, "__module__", None) != info.name:
                continue  # re-exported: checked where it is defined
            if inspect.isclass(obj) and "__init__" in obj.__dict__:
                yield f"{info.name}.{name}", obj, obj.__init__
            elif inspect.isfunction(obj):
                yield f"{info.name}.{name}", obj, obj


def _parameters(function):
    import inspect

    return [p for p in inspect.signature(function).parameters.values() if p.name not in ("self", "cls")]


def test_every_public_callable_has_type_hints():
    import inspect

    missing = {}
    for name, _, function in _public_callables():
        unannotated = [p.name for p in _parameters(function) if p.annotation is inspect.Parameter.empty]
        if unannotated:
            missing[name] = unannotated
    assert not missing, missing


def test_every_public_argument_is_in_its_docstring():
    # `help()` of a public class or function describes each of its arguments ("name:" under Args).
    import inspect

    missing = {}
    for name, obj, function in _public_callables():
        doc = inspect.getdoc(obj) or ""
        if function is not obj:
            doc += "\n" + (inspect.getdoc(function) or "")
        described = set(re.findall(r"^\s*\**(\w+)(?: \(.*?\))?:", doc, flags=re.MULTILINE))
        undocumented = [p.name for p in _parameters(function) if p.name not in described]
        if undocumented:
            missing[name] = undocumented
    assert not missing, missing


def test_attacks_print_no_retracing_warning():
    from deel_lip_ext import attacks
    from deel_lip_ext.layers import GroupSort2, SpectralDense

    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(70, 6)).astype("float32"), rng.integers(0, 3, 70)
    models = [keras.Sequential([keras.Input((6,)), SpectralDense(8), GroupSort2(), SpectralDense(3)]) for _ in range(4)]

    def attack_each():
        for model in models:
            attacks.pgd(model, x, y, 0.1, steps=3, batch_size=32, clip_min=None, clip_max=None)
            attacks.fgsm(model, x, y, 0.1, batch_size=32, clip_min=None, clip_max=None)

    log = _tensorflow_warnings(attack_each)
    assert "retracing" not in log, log[:1000]
