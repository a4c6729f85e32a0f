"""benchmarks/gpu_check.sh --dry-run: the GPU check runs end to end on the CPU (device 'strict', tiny sizes),
so the script a GPU owner runs is known to work before anyone has a GPU to run it on."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tinyllm import backend

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.skipif(backend.device != "cpu", reason="the dry run chooses its own devices; once is enough")
def test_gpu_check_dry_run_writes_every_part(tmp_path):
    env = {**os.environ, "OUT": str(tmp_path), "PYTHON": sys.executable}
    done = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu_check.sh"), "--dry-run"], env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    report = json.loads((tmp_path / "gpu_check.json").read_text())
    parts = report["parts"]
    assert list(parts) == ["versions", "suite", "train-tiny", "decode-b1", "decode-b16", "shakespeare"]
    assert all(part["rc"] == 0 for part in parts.values())
    assert parts["suite"]["figures"]["passed"] > 0 and "failed" not in parts["suite"]["figures"]
    assert parts["train-tiny"]["figures"]["tinyllm_ms"] > 0
    assert parts["decode-b16"]["figures"]["batch"] == 16 and parts["decode-b16"]["figures"]["tinyllm_tok_s"] > 0
    assert parts["shakespeare"]["figures"]["last_step"] == 20
    summary = (tmp_path / "summary.txt").read_text()
    assert "DRY RUN" in summary and "train-tiny" in summary
