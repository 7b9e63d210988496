"""demos/tulip.py --quick runs end to end: table, orderings the method predicts, PNG plot."""

import os
import pathlib
import re
import subprocess
import sys

import pytest
from conftest import data_available

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
METHODS = ("J0", "J1", "J2", "J2-Lip")
ROW = re.compile(r"^\| (J0|J1|J2|J2-Lip) \| ([\d.]+) \| ([\d.]+) \| ([\d.]+|inf) \| ([\d.]+) \|$")


@pytest.mark.slow
@pytest.mark.skipif(not data_available("mnist"), reason="mnist.npz not in $DEEL_LIP_EXT_DATA")
def test_quick_demo_prints_the_table_and_saves_the_plot(tmp_path):
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT), TF_CPP_MIN_LOG_LEVEL="3")
    result = subprocess.run(
        [sys.executable, str(REPO_ROOT / "demos" / "tulip.py"), "--quick", "--output-dir", str(tmp_path)],
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    rows = {}
    for line in result.stdout.splitlines():
        match = ROW.match(line.strip())
        if match:
            rows[match.group(1)] = [float(value) for value in match.groups()[1:]]
    assert set(rows) == set(METHODS), result.stdout
    for clean_error, error_at_eps, median_distance, lipschitz in rows.values():
        assert 0 <= clean_error <= error_at_eps <= 100
        assert clean_error < 30  # every method learned the digits
        assert 0 < median_distance < 6 and lipschitz > 0
    # What the objectives are for: the Lipschitz term flattens the loss landscape and
    # pushes the decision boundary away from the data.
    assert rows["J2-Lip"][3] < rows["J0"][3], rows
    assert rows["J2-Lip"][2] > rows["J0"][2], rows
    plot = tmp_path / "tulip_mnist_error_vs_eps.png"
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
