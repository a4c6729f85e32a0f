"""``benchmarks/bench_train.py --baseline``: another checkout timed beside this one, round by round.

Only what the script reports is checked here (never a timing): the baseline's row, one ratio per
round, and a clear refusal of a directory that is not a tinyllm checkout."""

import json
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "bench_train.py"
pytestmark = pytest.mark.skipif(not SCRIPT.exists(), reason="benchmarks/ is not in this checkout")


def test_a_baseline_checkout_is_timed_in_every_round_and_compared(tmp_path):
    out_json = tmp_path / "out.json"
    out = subprocess.run([sys.executable, str(SCRIPT), "--models", "tiny", "--steps", "1",
                          "--rounds", "2", "--baseline", str(ROOT), "--json", str(out_json)],
                         capture_output=True, text=True, timeout=240)
    assert out.returncode == 0, out.stderr
    assert "this checkout / baseline" in out.stdout
    report = json.loads(out_json.read_text())
    frameworks = {r["framework"] for r in report["results"]}
    assert {"tinyllm", "baseline"} <= frameworks
    same_start = {r["first_loss"] for r in report["results"] if r["framework"] != "torch"}
    assert len(same_start) == 1                      # the same code from the same seed
    ratios = report["vs_baseline"]["tiny"]
    assert len(ratios) == 2 and all(r > 0 for r in ratios)


def test_a_directory_that_is_not_a_checkout_is_refused(tmp_path):
    out = subprocess.run([sys.executable, str(SCRIPT), "--baseline", str(tmp_path)],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 2
    assert "not a tinyllm checkout" in out.stderr
