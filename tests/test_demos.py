"""The demos: their --quick runs (in subprocesses, marked slow) and their shared helpers.

Each demo writes results.json beside its plots; the slow tests read it, and check what
the demo printed, the files it wrote and the guarantees it claims (0 broken
certificates, a SavedModel that reloads to the same logits, a Wasserstein estimate
that approaches ||v|| from below, |f(x)| below the adversarial distances).
"""

import importlib.util
import json
import math
import os
import pathlib
import re
import subprocess
import sys

import keras
import numpy as np
import pytest
from conftest import data_available

REPOSITORY_ROOT = pathlib.Path(__file__).resolve().parents[1]
DEMOS = REPOSITORY_ROOT / "demos"
sys.path.insert(0, str(DEMOS))

import _common  # noqa: E402

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
DEMO_TIMEOUT_S = 1500

needs_mnist = pytest.mark.skipif(not data_available("mnist"), reason="mnist.npz not found in $DEEL_LIP_EXT_DATA")


DEMO_NAMES = (
    "certified_mnist",
    "hkr_binary",
    "wasserstein",
    "paper_table1",
    "linf_mnist",
    "tulip",
    "layer_comparison",
    "certified_mnist_best",
)
MIN_DPI = 150


def git_status():
    """`git status --porcelain --ignored` of the checkout (None outside a git checkout)."""
    completed = subprocess.run(
        ["git", "status", "--porcelain", "--ignored", "--untracked-files=all"],
        cwd=REPOSITORY_ROOT,
        capture_output=True,
        text=True,
    )
    if completed.returncode != 0:
        return None
    # Bytecode caches are Python's and .pytest_cache pytest's, not the demo's.
    return sorted(
        line
        for line in completed.stdout.splitlines()
        if not any(cache in line for cache in ("__pycache__", ".pyc", ".pytest_cache"))
    )


def load_demo(name):
    """`demos/<name>.py` imported as a module (its `main` not run), for its docstring and tables."""
    spec = importlib.util.spec_from_file_location(f"demo_{name}", DEMOS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run_demo(name, output_dir, *arguments, backend=None):
    """Run `demos/<name>.py --quick` in a subprocess; return (stdout, results.json as a dict).

    `backend` sets KERAS_BACKEND for the subprocess (None: inherit it).

    Also checks the shared conventions: the expected time is printed before anything
    else, a time table is printed, and nothing is written outside `output_dir` (the
    checkout's `git status`, ignored files included, is unchanged).
    """
    env = dict(os.environ, MPLBACKEND="Agg", TF_CPP_MIN_LOG_LEVEL="3")
    if backend is not None:
        env["KERAS_BACKEND"] = backend
    before = git_status()
    completed = subprocess.run(
        [sys.executable, str(DEMOS / f"{name}.py"), "--quick", "--output-dir", str(output_dir), *arguments],
        cwd=REPOSITORY_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=DEMO_TIMEOUT_S,
    )
    assert completed.returncode == 0, f"{name} failed:\n{completed.stdout[-4000:]}\n{completed.stderr[-4000:]}"
    results = json.loads((output_dir / _common.RESULTS_FILE).read_text())
    assert completed.stdout.startswith(f"demos/{name}.py, quick run"), completed.stdout[:300]
    assert "expected time about" in completed.stdout.splitlines()[0]
    assert "| phase" in completed.stdout and "| total" in completed.stdout  # the time table
    assert "time" in results
    assert git_status() == before, f"{name} wrote outside its output folder"
    for figure in output_dir.glob("*.png"):
        assert_png(figure)
    return completed.stdout, results


def png_dpi(data):
    """Dots per inch recorded in a PNG's pHYs chunk (None when absent)."""
    position = 8
    while position < len(data):
        length = int.from_bytes(data[position : position + 4], "big")
        kind = data[position + 4 : position + 8]
        if kind == b"pHYs":
            per_metre_x = int.from_bytes(data[position + 8 : position + 12], "big")
            return per_metre_x * 0.0254
        position += 12 + length
    return None


def assert_png(path):
    assert path.is_file(), f"{path} was not written"
    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE, f"{path} is not a PNG"
    dpi = png_dpi(data)
    assert dpi is not None and dpi >= MIN_DPI - 0.5, f"{path}: {dpi} dpi < {MIN_DPI}"


# ----------------------------------------------------------------------------- demos (slow)


@pytest.mark.slow
@needs_mnist
def test_certified_mnist_quick(tmp_path):
    stdout, results = run_demo("certified_mnist", tmp_path)

    # The table: one row per epsilon, with the computed Lipschitz bound in its title.
    assert "certified accuracy %" in stdout and "broken by PGD" in stdout
    certification = results["certification"]
    assert certification["lip_const_source"] == "computed"
    assert f"L = {certification['lip_const']:.7f}" in stdout
    for eps, accuracy in certification["certified_accuracy"].items():
        assert any(line.startswith(f"| {float(eps):<8} | {100 * accuracy:.2f}") for line in stdout.splitlines()), eps
    # BCOP layers are orthogonal: the measured bound is 1 up to float32 rounding.
    assert abs(certification["lip_const"] - 1.0) < 1e-4
    accuracies = list(certification["certified_accuracy"].values())
    assert certification["clean_accuracy"] > 0.5
    assert accuracies == sorted(accuracies, reverse=True) and accuracies[0] <= certification["clean_accuracy"]

    # PGD broke no certificate, and did attack certified points.
    assert results["broken_certificates"] == 0 and "0 certificates broken" in stdout
    assert all(check["n_broken"] == 0 for check in results["pgd_check"])
    assert results["pgd_check"][0]["n_certified"] > 0

    # Nearest adversarial examples are never inside the certified ball.
    examples = results["adversarial_examples"]
    assert examples["radius_below_distance"]
    assert np.all(np.array(examples["certified_radii"]) <= np.array(examples["distances"]))

    # Plain Keras export, reloaded with tf.saved_model.load: the same logits.
    export = results["export"]
    assert export["matches"] and export["max_abs_diff_reloaded_vs_lipschitz"] <= 1e-4
    assert "Conv2D" in export["plain_layers"] and "BCOPConv2D" not in export["plain_layers"]
    assert (tmp_path / "saved_model" / "saved_model.pb").is_file()
    assert_png(tmp_path / "certified_accuracy.png")
    assert_png(tmp_path / "adversarial_examples.png")


@pytest.mark.slow
@needs_mnist
@pytest.mark.parametrize("backend", ["jax", "torch"])
def test_certified_mnist_quick_on_other_backends(tmp_path, backend):
    pytest.importorskip(backend)
    stdout, results = run_demo("certified_mnist", tmp_path, backend=backend)
    certification = results["certification"]
    assert certification["clean_accuracy"] > 0.5 and abs(certification["lip_const"] - 1.0) < 1e-4
    assert results["broken_certificates"] == 0 and "0 certificates broken" in stdout
    assert results["adversarial_examples"]["radius_below_distance"]
    assert results["export"]["matches"]
    # The export names what it wrote: a SavedModel, or on torch (no SavedModel export) a .keras file.
    artifact = "Keras file" if backend == "torch" else "SavedModel"
    assert results["export"]["artifact"].startswith(artifact) and f"{artifact} " in stdout
    assert_png(tmp_path / "certified_accuracy.png")


@pytest.mark.slow
@needs_mnist
def test_wasserstein_quick(tmp_path):
    stdout, results = run_demo("wasserstein", tmp_path)
    translate = results["translate"]
    truth = translate["true_w1"]
    assert truth == pytest.approx(float(np.linalg.norm(translate["translation"])))

    # The 1-Lipschitz critic's estimate approaches ||v|| from below.
    estimate = translate["spectral"]["estimate"]
    assert abs(estimate - truth) <= 0.10 * truth, (estimate, truth)
    assert estimate <= 1.01 * truth, (estimate, truth)
    assert translate["spectral"]["certified_estimate"] <= truth * (1 + 1e-6)
    assert "W1(P, P + v)" in stdout

    # MNIST 0 vs 8: every critic was trained and reported; Lipschitz critics have L ~ 1.
    mnist = results["mnist_0_vs_8"]
    assert set(mnist) == {"spectral", "bcop", "gp"}
    assert abs(mnist["bcop"]["lip_const"] - 1.0) < 1e-4
    for method in ("spectral", "bcop"):
        assert mnist[method]["lip_const"] <= 1.0 + 1e-4
        assert mnist[method]["estimate"] > 0
    assert mnist["gp"]["lip_lower_bound"] <= mnist["gp"]["lip_const"]
    # The quick run's training curves are curves (several evaluations in its one epoch), not one point each.
    for method in ("spectral", "bcop", "gp"):
        epochs = mnist[method]["curve_epochs"]
        assert len(mnist[method]["curve"]) == len(epochs) >= 8 and epochs == sorted(epochs) and epochs[-1] == 1.0
    assert_png(tmp_path / "wasserstein_translate.png")
    assert_png(tmp_path / "wasserstein_mnist.png")


@pytest.mark.slow
@needs_mnist
def test_hkr_binary_quick(tmp_path):
    stdout, results = run_demo("hkr_binary", tmp_path)
    check = results["check"]
    assert check["n_violations"] == 0
    assert check["n_adversarial_found"] >= check["n_correct"] // 2 > 0
    assert check["min_distance_over_radius"] >= 1.0
    assert "for every point: True" in stdout
    assert results["certification"]["clean_accuracy"] > 0.9
    assert_png(tmp_path / "hkr_adversarial_examples.png")
    assert_png(tmp_path / "hkr_radius_vs_distance.png")


@pytest.mark.slow
@needs_mnist
def test_paper_table1_quick(tmp_path):
    stdout, results = run_demo("paper_table1", tmp_path)
    assert "| MNIST Small, eps = 1.58" in stdout
    header = next(line for line in stdout.splitlines() if line.startswith("| MNIST Small"))
    assert [cell.strip() for cell in header.strip("|").split("|")][2:] == ["OSSN", "RKO", "SVCM", "BCOP"]
    assert "97.54±0.06" in stdout and "45.84±0.90" in stdout  # the paper's BCOP cell
    table = results["results"]
    assert set(table) == {"ossn", "rko", "svcm", "bcop"}
    for conv, row in table.items():
        assert 0.0 <= row["robust"] <= row["clean"] <= 100.0, conv
        assert row["clean"] > 30.0, conv
        assert row["lip_const"] > 0
    assert abs(table["bcop"]["lip_const"] - 1.0) < 1e-4


@pytest.mark.slow
@needs_mnist
def test_tulip_quick_follows_the_demo_conventions(tmp_path):
    stdout, results = run_demo("tulip", tmp_path)
    assert set(results["results"]) == {"J0", "J1", "J2", "J2-Lip"}
    assert results["files"] == ["tulip_mnist_error_vs_eps.png"]
    assert_png(tmp_path / "tulip_mnist_error_vs_eps.png")
    assert "[4/4] J2-Lip: training" in stdout  # progress


@pytest.mark.slow
@needs_mnist
def test_linf_mnist_quick_follows_the_demo_conventions(tmp_path):
    stdout, results = run_demo("linf_mnist", tmp_path)
    scores, curves = results["scores"], results["curves"]
    assert 0 <= scores["certified_lipschitz"] <= scores["certified"] <= scores["pgd"] <= scores["clean"] <= 1
    # Certified accuracy can only fall as the radius grows; at eps = 0 it is the clean accuracy.
    for key in ("certified_ibp", "certified_lipschitz"):
        assert curves[key] == sorted(curves[key], reverse=True)
        assert curves[key][0] <= scores["clean"]
    assert_png(tmp_path / "linf_accuracy_vs_eps.png")
    # The paper's table with this run's row.
    assert "| model" in stdout and "| clean | PGD   | certified |" in stdout
    assert "paper v2 (ICLR'22): l_inf-dist Net" in stdout and "93.20" in stdout
    row = re.search(r"^\| this run: .*?\|\s*([\d.]+)\s*\|\s*([\d.]+)\s*\|\s*([\d.]+)\s*\|$", stdout, re.MULTILINE)
    clean, robust, certified = (float(value) for value in row.groups())
    lipschitz = float(re.search(r"Lipschitz rule .*?: ([\d.]+)%", stdout).group(1))
    assert lipschitz <= certified <= robust <= clean  # Lipschitz rule <= IBP <= PGD <= clean accuracy
    assert clean > 40.0  # far above chance (10 %) after the short schedule


# ----------------------------------------------------------------------------- no data (fast + slow)

_RUN_WITHOUT_DATA = """
import pathlib, runpy, sys
import deel_lip_ext.datasets as datasets
datasets.CHECKOUT_SHARED_DATA = pathlib.Path(sys.argv[1])  # the checkout's copies are not there
sys.argv = [sys.argv[2], "--quick", "--output-dir", sys.argv[3]]
sys.path.insert(0, str(pathlib.Path(sys.argv[0]).parent))  # as `python demos/<name>.py` does
runpy.run_path(sys.argv[0], run_name="__main__")
"""


@pytest.mark.parametrize(
    "name", [name if name == "certified_mnist" else pytest.param(name, marks=pytest.mark.slow) for name in DEMO_NAMES]
)
def test_demo_without_data_prints_the_fix_and_exits_nonzero_without_traceback(name, tmp_path):
    """A fresh clone without data: one message naming every place searched and the flags that fix it."""
    empty = tmp_path / "empty"
    empty.mkdir()
    env = dict(
        os.environ,
        MPLBACKEND="Agg",
        TF_CPP_MIN_LOG_LEVEL="3",
        PYTHONPATH=str(REPOSITORY_ROOT),
        DEEL_LIP_EXT_DATA="",
        KERAS_HOME=str(empty / "keras"),
        TFDS_DATA_DIR=str(empty / "tfds"),
    )
    completed = subprocess.run(
        [
            sys.executable,
            "-c",
            _RUN_WITHOUT_DATA,
            str(empty / "shared"),
            str(DEMOS / f"{name}.py"),
            str(tmp_path / "out"),
        ],
        cwd=REPOSITORY_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert completed.returncode != 0
    assert "Traceback" not in completed.stderr and "Traceback" not in completed.stdout, completed.stderr[-3000:]
    assert "expected time" in completed.stdout  # printed before the data is looked for
    message = completed.stderr
    dataset_file = "mnist.npz"
    for place in (
        empty / "shared" / dataset_file,
        empty / "keras" / "datasets" / dataset_file,
        empty / "tfds" / "mnist",
    ):
        assert str(place) in message, message
    command = f"python demos/{name}.py --quick"
    assert f"`{command} --data-dir <folder>`" in message and f"`{command} --download`" in message, message
    assert "DEEL_LIP_EXT_DATA=<folder>" in message and "download=True" not in message


def test_every_demo_states_its_expected_time():
    """Each budget of each demo carries its measured CPU minutes, the estimate printed up front."""
    for name in DEMO_NAMES:
        module = load_demo(name)
        budgets = getattr(module, "BUDGETS", None) or module.PRESETS
        for budget_name, budget in budgets.items():
            assert budget.get("cpu_minutes", 0) > 0, (name, budget_name)


def test_expected_time_wording():
    text = _common.expected_time(13.5)
    cores = os.cpu_count() or 1
    assert text.startswith("about 13.5 min of CPU time") and f"{cores}-core" in text


def test_certified_mnist_help_agrees_with_the_tutorial():
    """The default run's result that --help quotes is the one the tutorial's table shows."""
    module = load_demo("certified_mnist")
    clean, certified = re.search(r"reaches ([\d.]+) % clean / ([\d.]+) % certified", module.__doc__).groups()
    tutorial = (REPOSITORY_ROOT / "docs" / "tutorials" / "certified_mnist.md").read_text()
    assert f"clean accuracy {clean} %" in tutorial
    assert re.search(rf"^\| 1\.58 +\| {re.escape(certified)} ", tutorial, flags=re.MULTILINE)


def test_outputs_folder_is_ignored_by_git():
    completed = subprocess.run(
        ["git", "check-ignore", "-q", "outputs/certified_mnist/results.json"], cwd=REPOSITORY_ROOT
    )
    if completed.returncode == 128:
        pytest.skip("not a git checkout")
    assert completed.returncode == 0


def test_save_figure_writes_at_least_150_dpi(tmp_path):
    plt = _common.pyplot()
    fig, ax = plt.subplots(figsize=(2, 2))
    ax.plot([0, 1], [0, 1])
    _common.save_figure(fig, tmp_path / "f.png")
    assert_png(tmp_path / "f.png")


# ----------------------------------------------------------------------------- helpers (fast)


def test_parse_demo_arguments_budget_and_overrides(tmp_path):
    budgets = {"full": {"epochs": 7, "size": 100}, "quick": {"epochs": 1, "size": 10}}
    args = _common.parse_demo_arguments("demo", "doc", budgets, ["--output-dir", str(tmp_path / "out")])
    assert (args.budget.epochs, args.budget.size, args.quick) == (7, 100, False)
    assert (tmp_path / "out").is_dir()
    args = _common.parse_demo_arguments(
        "demo", "doc", budgets, ["--quick", "--epochs", "3", "--output-dir", str(tmp_path)]
    )
    assert (args.budget.epochs, args.budget.size) == (3, 10)
    assert args.data_dir == os.environ.get("DEEL_LIP_EXT_DATA", args.data_dir)
    with pytest.raises(SystemExit):
        _common.parse_demo_arguments("demo", "doc", budgets, ["--epochs", "0", "--output-dir", str(tmp_path)])


def test_format_table_is_an_aligned_markdown_table():
    table = _common.format_table(["eps", "accuracy %"], [(0.5, "91.20"), (1.58, "7.00")], title="T")
    lines = table.strip().splitlines()
    assert lines[0] == "T"
    rows = lines[2:]
    assert rows[0] == "| eps  | accuracy % |"
    assert rows[1] == "| ---- | ---------- |"
    assert rows[3] == "| 1.58 | 7.00       |"
    assert len({len(row) for row in rows}) == 1


def test_phase_timer_rows_and_totals():
    timer = _common.PhaseTimer()
    with timer.phase("work"):
        sum(i * i for i in range(300000))
    ((name, wall, cpu),) = timer.phases
    assert name == "work" and wall > 0 and cpu > 0
    rows = timer.rows()
    assert [row[0] for row in rows] == ["work", "total"]
    assert float(rows[1][1]) >= float(rows[0][1])
    assert set(timer.as_dict()["phases"]) == {"work"}


def test_geometric_budgets_endpoints_and_ratio():
    budgets = _common.geometric_budgets(0.25, 8.0, 6)
    assert budgets[0] == pytest.approx(0.25) and budgets[-1] == pytest.approx(8.0)
    assert np.allclose(np.diff(np.log(budgets)), math.log(2.0))


def test_nearest_adversarial_examples_on_a_linear_classifier():
    """f(x) = <w, x> + b with ||w|| = 1: the true distance to the boundary is exactly |f(x)|."""
    dim = 16
    rng = np.random.default_rng(0)
    w = rng.standard_normal(dim).astype("float32")
    w /= np.linalg.norm(w)
    model = keras.Sequential([keras.Input((dim,)), keras.layers.Dense(1)])
    model.layers[0].set_weights([w[:, None], np.zeros(1, "float32")])
    # Points in the middle of the box, at known signed distances from the hyperplane <w, x> = <w, 0.5>.
    offsets = np.array([0.05, -0.1, 0.2, -0.3], dtype="float32")
    x = 0.5 + offsets[:, None] * w[None, :]
    model.layers[0].set_weights([w[:, None], np.array([-0.5 * w.sum()], "float32")])
    labels = np.sign(offsets)
    budgets = _common.geometric_budgets(0.02, 1.0, 25)
    x_adv, distances = _common.nearest_adversarial_examples(model, x, labels, budgets, steps=30)
    true_distances = np.abs(offsets)
    ratio = budgets[1] / budgets[0]
    assert np.all(distances >= true_distances * (1 - 1e-4))
    assert np.all(distances <= true_distances * ratio * (1 + 1e-3))
    flipped = np.sign(keras.ops.convert_to_numpy(model(x_adv))[:, 0]) != labels
    assert np.all(flipped)
    assert np.allclose(np.linalg.norm(x_adv - x, axis=1), distances, rtol=1e-5)


@pytest.mark.parametrize("conv, size", [("spectral", "small"), ("bcop", "wide"), ("bcop", "small")])
def test_build_network_shapes_and_computed_bound(conv, size):
    from deel_lip_ext.utils import model_lipschitz_bound

    model = _common.build_network(conv, size, num_classes=3)
    assert model.output_shape == (None, 3)
    widths = {"small": 32 * 7 * 7, "wide": 64 * 7 * 7}
    assert model.get_layer("flatten").output.shape[-1] == widths[size]
    bound = model_lipschitz_bound(model)
    assert bound <= 1.0 + 1e-5
    if conv == "bcop":  # orthogonal convolutions and dense layers: exactly 1 up to rounding
        assert bound == pytest.approx(1.0, abs=1e-5)


def test_build_network_rejects_unknown_names():
    with pytest.raises(ValueError, match="conv must be one of"):
        _common.build_network("fft")
    with pytest.raises(ValueError, match="size must be one of"):
        _common.build_network("bcop", "huge")


def test_paper_learning_rate_schedule():
    short = _common.paper_learning_rate(10)
    assert short(0) == pytest.approx(1e-3) and short(10) == pytest.approx(1e-4)
    paper = _common.paper_learning_rate(200)
    assert paper(60) == pytest.approx(1e-4) and paper(120) == pytest.approx(1e-5)


# ---------------------------------------------------------------- certified_mnist: --help, figure, progress


def test_certified_mnist_help_names_what_the_export_really_holds():
    """--help (the module docstring) lists the layer types of the default network's export."""
    demo = load_demo("certified_mnist")
    claim = demo.__doc__.split("4. exports", 1)[1].split("\n\n", 1)[0]
    for conv in ("bcop", "spectral"):
        exported = {type(layer).__name__ for layer in _common.build_network(conv, "wide").vanilla_export().layers}
        assert exported - {"InputLayer"}, exported
        missing = [name for name in sorted(exported - {"InputLayer"}) if name not in claim]
        assert not missing, f"--help does not say the export holds {missing}"
    assert "stock Conv2D/Dense)" not in demo.__doc__


def test_signed_rows_get_a_diverging_colour_scale(tmp_path, monkeypatch):
    figures = []
    monkeypatch.setattr(_common, "save_figure", lambda fig, path: figures.append(fig) or path)
    images = np.random.default_rng(0).random((3, 5, 5, 1)).astype("float32")
    _common.save_image_grid(
        tmp_path / "grid.png",
        [images, images - 0.5],
        ["clean", "perturbation"],
        [["a"] * 3, ["b"] * 3],
        title="t",
        signed_rows={1: "x' - x"},
    )
    (fig,) = figures
    colorbars = [ax for ax in fig.axes if ax.get_label() == "<colorbar>"]
    assert len(colorbars) == 1 and colorbars[0].get_ylabel() == "x' - x"
    signed = fig.axes[3].images[0]
    low, high = signed.get_clim()
    assert low == -high == pytest.approx(-np.max(np.abs(images - 0.5)))
    assert signed.get_cmap().name == "RdBu_r" and fig.axes[0].images[0].get_cmap().name == "gray"
    _common.pyplot().close(fig)


def test_fit_paper_protocol_prints_progress_during_the_first_epoch(capsys, monkeypatch):
    monkeypatch.setattr(_common, "fit_verbosity", lambda: 2)  # logs / subprocess, as in CI
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(10)])
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(20 * 128, 4)).astype("float32"), rng.integers(0, 10, 20 * 128)
    _common.fit_paper_protocol(model, x, y, epochs=2)
    out = capsys.readouterr().out
    lines = re.findall(r"epoch 1/2: batch (\d+)/20, \d+ s, loss", out)
    assert [int(n) for n in lines] == [2, 4, 6, 8, 10, 12, 14, 16, 18]
    assert out.index("epoch 1/2: batch 2/20") < out.index("20/20 - ")  # before the epoch's own summary line


# ----------------------------------------------------------------------------- issue 16: comparison and recipe


def table_rows(markdown, title_start):
    """The body rows (lists of cells) of the markdown table whose title starts with `title_start`."""
    lines = markdown.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(title_start))
    rows = []
    for line in lines[start + 1 :]:
        if rows and not line.startswith("|"):
            break
        if line.startswith("|"):
            rows.append([cell.strip() for cell in line.strip("|").split("|")])
    return rows[2:]  # past the header and the separator


@pytest.mark.slow
@needs_mnist
@pytest.mark.skipif(
    not (data_available("cifar10") or data_available("cifar10_jpeg_20k")),
    reason="no CIFAR-10 (or its 20k subset) in $DEEL_LIP_EXT_DATA",
)
def test_layer_comparison_quick(tmp_path):
    sys.path.insert(0, str(DEMOS))
    from _families import FAMILIES, FAMILY_LABELS

    stdout, results = run_demo("layer_comparison", tmp_path)
    assert results["broken_certificates"] == 0 and "0 certificates broken" in stdout
    assert results["export_max_abs_diff"] <= 1e-4
    markdown = (tmp_path / "layer_comparison.md").read_text()
    for dataset in ("mnist", "cifar10"):
        entry = results["results"][dataset]
        assert set(entry["families"]) == set(FAMILIES)
        rows = table_rows(markdown, f"{dataset}:")
        assert [row[0] for row in rows] == [FAMILY_LABELS[family] for family in FAMILIES]
        for family, row in entry["families"].items():
            accuracies = [row["clean_accuracy"], *row["certified_accuracy"]]
            assert all(math.isfinite(a) and 0.0 <= a <= 1.0 for a in accuracies), family
            # Certified accuracy can only fall as eps grows, and never exceeds the clean accuracy.
            assert accuracies == sorted(accuracies, reverse=True), family
            assert row["lip_const_source"] == "computed" and 0 < row["lip_const"] < 1.0 + 1e-4, family
            assert row["pgd_broken"] == 0, family
            assert row["train_images_per_second"] > 0 and row["inference_images_per_second"] > 0, family
            assert row["peak_resident_mib"] > 0 and row["epochs"] > 0, family
            seconds = [point[0] for point in row["curve"]]
            assert len(seconds) >= 2 and seconds == sorted(seconds), family
            assert row["curve"][-1][1] >= 0.0, family
            assert f"{FAMILY_LABELS[family]}: clean" in stdout  # the progress line
    for figure in ("certified_vs_eps.png", "pareto.png"):
        assert_png(tmp_path / figure)
    assert results["files"] == ["layer_comparison.md", "certified_vs_eps.png", "pareto.png"]


def test_layer_comparison_page_shows_the_kept_default_run():
    """The tutorial's tables are the demo's own tables of the default run's results.json, kept in
    benchmarks/results/ beside the page's plots (so a number on the page cannot drift from its run)."""
    module = load_demo("layer_comparison")
    kept = json.loads((REPOSITORY_ROOT / "benchmarks" / "results" / "layer_comparison_default.json").read_text())
    page = (REPOSITORY_ROOT / "docs" / "tutorials" / "layer_comparison.md").read_text()
    assert set(kept["results"]) == {"mnist", "cifar10"} and kept["broken_certificates"] == 0
    for name, entry in kept["results"].items():
        assert entry["budget_seconds"] == module.BUDGETS["full"]["budget_seconds"], name  # the default run
        headers, rows = module.table(module.DATASETS[name], entry["families"])
        assert _common.format_table(headers, rows) in page, name
    for figure in ("certified_vs_eps", "pareto"):
        assert f"(../img/layer_comparison_{figure}.png)" in page
        assert_png(REPOSITORY_ROOT / "docs" / "img" / f"layer_comparison_{figure}.png")


@pytest.mark.slow
@needs_mnist
def test_certified_mnist_best_quick(tmp_path):
    stdout, results = run_demo("certified_mnist_best", tmp_path)
    certification = results["certification"]
    assert certification["lip_const_source"] == "computed" and abs(certification["lip_const"] - 1.0) < 1e-4
    accuracies = list(certification["certified_accuracy"].values())
    assert certification["clean_accuracy"] > 0.5
    assert accuracies == sorted(accuracies, reverse=True) and accuracies[0] <= certification["clean_accuracy"]
    assert results["broken_certificates"] == 0 and "0 certificates broken" in stdout
    assert results["pgd_check"][0]["n_certified"] > 0
    assert results["adversarial_examples"]["radius_below_distance"]
    assert results["export"]["matches"] and (tmp_path / "saved_model" / "saved_model.pb").is_file()
    # Trained for its time budget (the first, compiling step apart), not for a number of epochs.
    assert results["time_budget"] == 15 and 15 <= results["training"]["wall_s"] < 15 + 30
    assert "s of wall clock" in stdout
    assert_png(tmp_path / "certified_accuracy.png")
    assert_png(tmp_path / "adversarial_examples.png")
