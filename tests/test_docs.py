"""The documentation stays true to the code: API pages, names used in the pages, the
site build, the getting-started example, and the migration page's claims."""

import html
import importlib
import importlib.util
import json
import pathlib
import pkgutil
import re
import shutil
import subprocess
import sys

import keras
import numpy as np
import pytest

import deel_lip_ext

ROOT = pathlib.Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
PAGES = sorted(DOCS.rglob("*.md"))


def _numpy(tensor):
    """A backend tensor as numpy (detached on torch, where np.asarray refuses a tensor that requires grad)."""
    return keras.ops.convert_to_numpy(tensor)


def _public_modules():
    """Dotted names of every public module of the package (private `_x` ones excluded)."""
    names = []
    for module in pkgutil.walk_packages(deel_lip_ext.__path__, prefix="deel_lip_ext."):
        if not any(part.startswith("_") for part in module.name.split(".")):
            names.append(module.name)
    return names


def _documented_modules():
    return {
        match.group(1)
        for page in (DOCS / "api").glob("*.md")
        for match in re.finditer(r"^::: ([\w.]+)\s*$", page.read_text(), flags=re.MULTILINE)
    }


def _is_documented_elsewhere(name):
    """Subpackages are documented through their modules, and pure re-export modules
    (e.g. `deel_lip_ext.activations`) through the modules that define their names."""
    module = importlib.import_module(name)
    if hasattr(module, "__path__"):
        return True
    exported = getattr(module, "__all__", ())
    return bool(exported) and all(getattr(getattr(module, item), "__module__", name) != name for item in exported)


def test_every_public_module_has_an_api_section():
    documented = _documented_modules()
    missing = [name for name in _public_modules() if name not in documented and not _is_documented_elsewhere(name)]
    assert not missing, f"modules without a `::: module` section in docs/api/: {missing}"


def test_every_page_is_in_the_navigation():
    config = (ROOT / "mkdocs.yml").read_text()
    listed = set(re.findall(r":\s*([\w/]+\.md)\s*$", config, flags=re.MULTILINE))
    unlisted = [str(page.relative_to(DOCS)) for page in PAGES if str(page.relative_to(DOCS)) not in listed]
    assert not unlisted, f"pages missing from mkdocs.yml's nav: {unlisted}"
    missing = [name for name in listed if not (DOCS / name).is_file()]
    assert not missing, f"nav entries without a page: {missing}"


def _referenced_names():
    """(page, module, attribute) for every `from deel_lip_ext... import a, b` line and
    every dotted `deel_lip_ext.module.Name` written in the pages."""
    references = set()
    for page in PAGES:
        text = page.read_text()
        for module, names in re.findall(r"from (deel_lip_ext[\w.]*) import (\([^)]*\)|[^\n#]+)", text):
            for name in re.split(r"[(),\s]+", names):
                if name:
                    references.add((page.name, module, name))
        for dotted in re.findall(r"\bdeel_lip_ext(?:\.\w+)+", text):
            module, _, name = dotted.rpartition(".")
            references.add((page.name, module, name))
    return sorted(references)


def _resolves(module, name):
    try:
        imported = importlib.import_module(module)
    except ImportError:
        return False
    if hasattr(imported, name):
        return True
    # `deel_lip_ext.layers.dense` is a module reference, not an attribute.
    return importlib.util.find_spec(f"{module}.{name}") is not None


def test_names_written_in_the_docs_exist():
    references = _referenced_names()
    assert len(references) > 30  # the parser does find the pages' references
    unresolved = [f"{page}: {module}.{name}" for page, module, name in references if not _resolves(module, name)]
    assert not unresolved, f"names in the docs that the package does not define: {unresolved}"


@pytest.mark.skipif(
    importlib.util.find_spec("mkdocs") is None, reason="mkdocs is not installed (pip install -e .[docs])"
)
def test_site_builds_in_strict_mode(tmp_path):
    completed = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    assert (tmp_path / "site" / "index.html").is_file()


# ---------------------------------------------------------------- migration page claims


def _interior_impulse(size=28, channels=1):
    x = np.zeros((1, size, size, channels), np.float32)
    x[0, size // 2, size // 2, 0] = 1.0
    return x


def _shift_copy_kernel():
    """3x3 kernel, 1 -> 9 channels, output channel o copies the pixel at offset o: its
    reshaped (9, 9) matrix is the identity, i.e. already orthonormal."""
    kernel = np.zeros((3, 3, 1, 9), np.float32)
    for channel in range(9):
        kernel[channel // 3, channel % 3, 0, channel] = 1.0
    return kernel


def test_deel_lip_average_overlap_factor_is_not_an_upper_bound():
    import keras

    size = 28
    a = 1  # (kernel_size - 1) / 2
    deel_lip_factor = np.sqrt(size * size / ((3 * size - a * (a + 1)) ** 2))
    assert deel_lip_factor == pytest.approx(28 / 82)
    conv = keras.layers.Conv2D(9, 3, padding="same", use_bias=False)
    conv.build((None, size, size, 1))
    conv.set_weights([_shift_copy_kernel() * deel_lip_factor])
    gain = np.linalg.norm(keras.ops.convert_to_numpy(conv(_interior_impulse(size))))
    assert gain == pytest.approx(3 * 28 / 82, rel=1e-6) and gain > 1.02


def test_our_spectral_conv_keeps_the_worst_kernel_at_one():
    from deel_lip_ext.layers import SpectralConv2D

    layer = SpectralConv2D(9, 3, padding="same", use_bias=False, eps_spectral=0, eps_bjorck=0)
    layer.build((None, 28, 28, 1))
    layer.kernel.assign(_shift_copy_kernel())
    gain = np.linalg.norm(_numpy(layer(_interior_impulse(28))))
    assert gain == pytest.approx(1.0, abs=1e-3) and gain <= 1.0 + 1e-4


def test_maxmin_is_deel_lip_crelu_and_maxmin_halves_sorts_the_halves():
    from deel_lip_ext.layers import CReLU, MaxMin, MaxMinHalves

    x = np.random.default_rng(0).normal(size=(5, 6)).astype(np.float32)
    crelu = np.concatenate([np.maximum(x, 0), np.maximum(-x, 0)], -1)
    np.testing.assert_allclose(_numpy(CReLU()(x)), crelu)
    np.testing.assert_allclose(_numpy(MaxMin()(x)), crelu)
    a, b = x[:, :3], x[:, 3:]
    np.testing.assert_allclose(_numpy(MaxMinHalves()(x)), np.concatenate([np.maximum(a, b), np.minimum(a, b)], -1))


def test_householder_applies_k_coef_lip():
    from deel_lip_ext.layers import Householder

    x = np.random.default_rng(1).normal(size=(4, 8)).astype(np.float32)
    unit, scaled = Householder(k_coef_lip=1.0), Householder(k_coef_lip=2.5)
    np.testing.assert_allclose(_numpy(scaled(x)), 2.5 * _numpy(unit(x)), rtol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(_numpy(unit(x)), axis=-1), np.linalg.norm(x, axis=-1), rtol=1e-5)


def test_l2_pooling_is_smooth_at_zero_and_close_to_the_norm():
    from _backend import input_gradient

    from deel_lip_ext.layers import ScaledL2NormPooling2D

    pool = ScaledL2NormPooling2D(pool_size=(2, 2))
    zeros = np.zeros((1, 2, 2, 1), "float32")
    value = pool(zeros)
    gradient = input_gradient(pool, zeros)
    assert np.all(np.isfinite(gradient)) and np.all(gradient == 0.0) and float(_numpy(value).item()) == 0.0
    window = np.array([[[[3.0], [4.0]], [[0.0], [0.0]]]], np.float32)
    assert float(_numpy(pool(window)).item()) == pytest.approx(5.0, abs=1e-5)


def test_bare_calls_change_no_state_and_the_kernel_is_never_stale():
    import keras

    from deel_lip_ext.layers import SpectralDense

    layer = SpectralDense(4)
    layer.build((None, 6))
    x = np.random.default_rng(2).normal(size=(3, 6)).astype(np.float32)
    u_before = np.array(layer.u)
    layer(x)
    np.testing.assert_array_equal(np.array(layer.u), u_before)
    new_kernel = keras.ops.convert_to_numpy(keras.random.normal((6, 4), seed=3))
    layer.kernel.assign(new_kernel)
    expected = x @ _numpy(layer.effective_kernel()) + _numpy(layer.bias)
    np.testing.assert_allclose(_numpy(layer(x)), expected, rtol=1e-5, atol=1e-6)
    # ... and that kernel is orthonormal, whatever the raw kernel was.
    singular_values = np.linalg.svd(_numpy(layer.effective_kernel()), compute_uv=False)
    np.testing.assert_allclose(singular_values, 1.0, atol=1e-2)


# ---------------------------------------------------------------- getting started runs


@pytest.mark.slow
def test_getting_started_code_runs_against_the_real_api(monkeypatch, tmp_path):
    """Runs every ```python block of getting_started.md in order, on a few hundred MNIST
    images, one epoch and a short attack (the page's own figures come from the full run)."""
    from conftest import data_available

    if not data_available("mnist"):
        pytest.skip("mnist.npz not in $DEEL_LIP_EXT_DATA")
    import keras

    from deel_lip_ext import datasets

    from deel_lip_ext import attacks

    full_load, full_load_numpy, full_fit = datasets.load, datasets.load_numpy, keras.Model.fit
    full_verify = attacks.verify_certificates
    monkeypatch.setattr(datasets, "load", lambda *a, **k: full_load(*a, num_examples=512, **k))
    monkeypatch.setattr(datasets, "load_numpy", lambda *a, **k: full_load_numpy(*a, num_train=512, num_test=64, **k))
    monkeypatch.setattr(keras.Model, "fit", lambda self, *a, **k: full_fit(self, *a, **{**k, "epochs": 1}))
    monkeypatch.setattr(
        attacks, "verify_certificates", lambda *a, **k: full_verify(*a, **{**k, "steps": 10, "restarts": 1})
    )
    monkeypatch.chdir(tmp_path)

    text = (DOCS / "getting_started.md").read_text()
    code = "\n".join(re.findall(r"```python\n(.*?)```", text, flags=re.DOTALL))
    namespace = {}
    exec(compile(code, "getting_started.md", "exec"), namespace)
    assert namespace["check"].n_broken == 0
    assert (tmp_path / "certified_accuracy.png").is_file()
    assert (tmp_path / "mnist_lipschitz_savedmodel" / "saved_model.pb").is_file()
    assert 0.0 < namespace["result"].lip_const <= 1.0


# ---------------------------------------------------------------- benchmarks page source


def _benchmark_script():
    spec = importlib.util.spec_from_file_location("train_step", ROOT / "benchmarks" / "train_step.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize(
    "workload, flattened, trainable",
    [
        # WORKLOADS.md: kernels + biases of SConv 16, SConv 32, SDense 64, SDense 10 on 28x28x1 ...
        ("W1", 7 * 7 * 32, (9 * 1 * 16 + 16) + (9 * 16 * 32 + 32) + (1568 * 64 + 64) + (64 * 10 + 10)),
        # ... and of SConv 64, 64, 128, 128, SDense 256, SDense 10 on 32x32x3.
        (
            "W2",
            8 * 8 * 128,
            (9 * 3 * 64 + 64)
            + (9 * 64 * 64 + 64)
            + (9 * 64 * 128 + 128)
            + (9 * 128 * 128 + 128)
            + (8192 * 256 + 256)
            + (256 * 10 + 10),
        ),
    ],
)
def test_benchmark_builds_the_reference_workloads(workload, flattened, trainable):
    import keras

    bench = _benchmark_script()
    plain, lip = bench.build_model(workload, "plain"), bench.build_model(workload, "lip")
    for model in (plain, lip):
        flatten = next(layer for layer in model.layers if isinstance(layer, keras.layers.Flatten))
        assert flatten.output.shape[-1] == flattened
        assert sum(int(np.prod(w.shape)) for w in model.trainable_weights) == trainable
        assert model.output_shape == (None, 10)
    kinds = [type(layer).__name__ for layer in lip.layers]
    assert kinds.count("SpectralConv2D") == (2 if workload == "W1" else 4)
    assert kinds.count("GroupSort2") == kinds.count("SpectralConv2D") + 1  # one after the hidden dense
    assert kinds.count("ScaledL2NormPooling2D") == 2
    plain_kinds = [type(layer).__name__ for layer in plain.layers]
    assert plain_kinds.count("ReLU") == kinds.count("GroupSort2") and plain_kinds.count("MaxPooling2D") == 2
    x, y = bench.fixed_batch(workload)
    assert x.shape == (256,) + bench.WORKLOADS[workload]["input_shape"] and x.dtype == np.float32
    assert y.min() >= 0 and y.max() <= 9


@pytest.mark.slow
def test_benchmark_one_row_reports_every_figure():
    bench = _benchmark_script()
    row = bench.measure_one(
        "W1", "lip", steps=1, warmup=0, conv_name="SpectralConv2D", padding="same", jit_compile="auto"
    )
    for key in ("train_step_ms", "infer_ms", "infer_trainflag_ms", "infer_export_ms", "peak_rss_mb", "cpu_util"):
        assert row[key] > 0
    assert row["losses_finite"] and row["export_max_abs_diff"] < 1e-4
    plain = {
        "workload": "W1",
        "variant": "plain",
        "train_step_ms": 2 * row["train_step_ms"],
        "infer_ms": row["infer_ms"],
        "infer_trainflag_ms": row["infer_trainflag_ms"],
    }
    bench.add_ratios([plain, row])
    assert row["train_step_ratio"] == pytest.approx(0.5) and row["infer_ratio"] == pytest.approx(1.0)
    assert row["infer_export_ratio"] == pytest.approx(row["infer_export_ms"] / row["infer_ms"])
    table = bench.markdown_table(
        [plain | {"conv": "Conv2D(same)", "first_loss": 2.3, "final_loss": 2.2, "losses_finite": True}, row]
    )
    lines = table.splitlines()
    assert len(lines) == 4 and all(line.count("|") == lines[0].count("|") for line in lines)


# ---------------------------------------------------------------- the rendered site


def _build_site(tmp_path):
    completed = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    return tmp_path / "site"


# Helpers that other modules use but that are not part of the API a reader needs.
INTERNAL_NAMES = (
    "deel_lip_ext.layers.padding.int_pair",
    "deel_lip_ext.layers.padding.check_channels_last",
    "deel_lip_ext.layers.padding.normalize_padding_2d",
    "deel_lip_ext.layers.base.check_k_coef_lip",
    "deel_lip_ext.layers.base.SpectralMixin",
    "deel_lip_ext.layers.base.KernelBiasMixin",
    "deel_lip_ext.layers.bcop.DownsamplingConv2DBase",
    "deel_lip_ext.normalizers.check_normalizer_args",
)


@pytest.mark.skipif(
    importlib.util.find_spec("mkdocs") is None, reason="mkdocs is not installed (pip install -e .[docs])"
)
def test_rendered_api_pages_show_examples_as_code_math_and_public_names_only(tmp_path):
    """Snag 4 of the newcomer issue: `>>>` examples rendered as nested blockquotes, raw
    formulas, internal helpers on the API pages, docstring warnings turned off."""
    config = (ROOT / "mkdocs.yml").read_text()
    assert "warnings: false" not in config and "pymdownx.arithmatex" in config
    site = _build_site(tmp_path)
    api_pages = sorted((site / "api").glob("*/index.html"))
    assert len(api_pages) == len(list((DOCS / "api").glob("*.md")))
    highlighted_examples = 0
    for page in api_pages:
        html = page.read_text()
        # A `>>>` line outside a code block is markdown for three nested blockquotes.
        assert not re.search(r"<blockquote>\s*<blockquote>", html), f"{page.parent.name}: blockquoted >>> example"
        assert "<p>&gt;&gt;&gt;" not in html and "\n&gt;&gt;&gt; " not in html, page.parent.name
        highlighted_examples += html.count('<span class="gp">&gt;&gt;&gt; </span>')
        for name in INTERNAL_NAMES:
            assert f'id="{name}"' not in html, f"{name} is listed on {page.parent.name}"
    assert highlighted_examples > 100  # the examples are there, as highlighted code
    layers = (site / "api" / "layers" / "index.html").read_text()
    assert 'id="deel_lip_ext.layers.padding.CircularPadding2D"' in layers
    # Signatures carry their types (the Type column of the parameter tables comes from them).
    datasets_page = (site / "api" / "datasets" / "index.html").read_text()
    assert re.search(r"num_train.{0,400}int.{0,40}None", datasets_page, flags=re.DOTALL)
    # Defaults that name a constant show its value (docs/_hooks/griffe_constant_defaults.py).
    assert not re.search(r"DEFAULT_[A-Z_]+(</a>)?</code>\s*</td>", layers)
    assert re.search(r"<code>eps_spectral</code>.{0,1500}?<code>0\.001</code>", layers, flags=re.DOTALL)
    # The attributes of the loader's errors have their Type column filled.
    searched_cells = r"DatasetNotFoundError\.searched\">searched</span></code></td>\s*<td>\s*<code>(.*?)</code>"
    assert re.search(searched_cells, datasets_page).group(1).count("title=") == 2  # list[str]
    # Formulas go through MathJax.
    home = (site / "index.html").read_text()
    assert 'class="arithmatex"' in home and "mathjax" in home.lower()


def test_home_page_lists_every_module_and_tutorial():
    home = (DOCS / "index.md").read_text()
    missing = [
        str(page.relative_to(DOCS))
        for page in sorted((DOCS / "api").glob("*.md")) + sorted((DOCS / "tutorials").glob("*.md"))
        if f"({page.relative_to(DOCS)})" not in home
    ]
    assert not missing, f"pages the home page does not link: {missing}"


def test_docs_call_plain_pytest_the_fast_suite():
    for page in [ROOT / "README.md", *PAGES]:
        assert "the whole suite" not in page.read_text(), page


def test_benchmarks_page_has_its_figure_and_no_table_wider_than_eight_columns():
    page = (DOCS / "benchmarks.md").read_text()
    figures = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", page)
    assert figures and all((DOCS / figure).is_file() for figure in figures)
    for line in page.splitlines():
        if line.startswith("|"):
            assert line.count("|") - 1 <= 9, line  # at most 9 columns
    # No file the reader of the site does not have.
    assert "ANCHORS" not in page and "shared/" not in page


def test_benchmark_plot_script_draws_the_json_of_train_step(tmp_path):
    import json

    spec = importlib.util.spec_from_file_location("plot_train_step", ROOT / "benchmarks" / "plot_train_step.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    rows = [
        {
            "workload": "W1",
            "variant": "plain",
            "train_step_ms": 10.0,
            "infer_ms": 4.0,
            "infer_trainflag_ms": 5.0,
            "cpu_util": 1.9,
        },
        {
            "workload": "W1",
            "variant": "lip",
            "train_step_ms": 15.0,
            "infer_ms": 5.0,
            "infer_trainflag_ms": 9.0,
            "infer_export_ms": 6.0,
            "cpu_util": 1.8,
        },
        {"workload": "W2", "variant": "lip", "error": "killed"},
    ]
    path = tmp_path / "bench.json"
    path.write_text(json.dumps({"meta": {"date": "2026-01-01", "machine": "test"}, "results": rows}))
    meta, by_workload = module.load_rows(path)
    assert set(by_workload) == {"W1"}
    assert module.bars(by_workload["W1"]) == [
        ("training step", 10.0, 15.0),
        ("inference", 4.0, 5.0),
        ("forward, training=True", 5.0, 9.0),
        ("exported inference", 4.0, 6.0),
    ]
    assert module.main([str(path), str(tmp_path / "plot.png")]) == 0
    assert (tmp_path / "plot.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # The figure of the docs page is drawn from the JSON file kept beside the script.
    kept = ROOT / "benchmarks" / "results" / "train_step_tensorflow.json"
    assert kept.is_file() and module.load_rows(kept)[1]


def test_documented_exports_are_quiet():
    """`model.export` prints the SavedModel's capture list unless `verbose=False`."""
    for page in [ROOT / "README.md", *PAGES, *sorted((ROOT / "demos").glob("*.py"))]:
        for line in page.read_text().splitlines():
            if re.search(r"\.export\(", line) and "def " not in line:
                assert "verbose=False" in line, f"{page.name}: {line.strip()}"


def _benchmark_script_and_marked_tables(script):
    """`benchmarks/<script>.py` as a module, and the (results file, table) pairs the benchmarks page marks for it."""
    spec = importlib.util.spec_from_file_location(script, ROOT / "benchmarks" / f"{script}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    page = (DOCS / "benchmarks.md").read_text()
    marker = rf"<!-- table: benchmarks/{script}.py --table (\S+) -->\n(.*?)\n<!-- end table -->"
    return module, re.findall(marker, page, re.S)


def test_benchmarks_page_tables_are_their_results_files():
    """Each train-step table of the page is what `plot_train_step.py --table` prints for the JSON file its
    marker names (the first one also draws the page's figure)."""
    module, marked = _benchmark_script_and_marked_tables("plot_train_step")
    assert [path for path, _ in marked][:1] == ["benchmarks/results/train_step_tensorflow.json"]
    for path, table in marked:
        _, rows = module.load_rows(ROOT / path)
        assert table == module.markdown_table(rows), path


def test_benchmarks_page_parametrization_tables_are_their_results_files():
    """Each marked parametrization table of the page is what `parametrization.py --table` prints for its JSON file."""
    module, marked = _benchmark_script_and_marked_tables("parametrization")
    assert len(marked) >= 2
    for path, table in marked:
        assert table == module.markdown_table(ROOT / path), path


def _mathjax_folder():
    spec = importlib.util.find_spec("mathjax")
    if spec is None or not spec.submodule_search_locations:
        return None
    folder = pathlib.Path(list(spec.submodule_search_locations)[0]) / "static" / "mathjax"
    return folder if (folder / "es5" / "node-main.js").is_file() else None


@pytest.mark.slow  # a site build and a node process
@pytest.mark.skipif(importlib.util.find_spec("mkdocs") is None, reason="mkdocs is not installed (.[docs])")
@pytest.mark.skipif(_mathjax_folder() is None, reason="django-static-mathjax is not installed (.[docs])")
@pytest.mark.skipif(shutil.which("node") is None, reason="node is not installed")
def test_every_formula_of_the_site_parses_with_the_served_mathjax(tmp_path):
    """Each arithmatex formula of the built site goes through MathJax's TeX input (the copy the
    site serves) without an error or an undefined macro."""
    site = _build_site(tmp_path)
    formulas = []
    for page in site.rglob("*.html"):
        for _, body in re.findall(r'<(span|div) class="arithmatex">(.*?)</\1>', page.read_text(), flags=re.DOTALL):
            text = html.unescape(body).strip()
            match = re.fullmatch(r"\\\((.*)\\\)|\\\[(.*)\\\]", text, flags=re.DOTALL)
            formulas.append(next(group for group in match.groups() if group is not None) if match else text)
    assert len(formulas) > 20
    completed = subprocess.run(
        ["node", str(ROOT / "tests" / "fixtures" / "mathjax_parse.js"), str(_mathjax_folder())],
        input=json.dumps(formulas),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert completed.returncode == 0, completed.stdout + completed.stderr
    result = json.loads(completed.stdout.strip().splitlines()[-1])
    assert result == {"n": len(formulas), "bad": []}, result["bad"]
