"""The GPU check script's dry run (tiny sizes on CPU) runs the same code as on a GPU, so it never rots."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_gpu_check_dry_run(tmp_path):
    out = tmp_path / "rows.json"
    proc = subprocess.run(["bash", "scripts/gpu_check.sh", "--dry-run", "--out", str(out)], cwd=ROOT,
                          env={**os.environ, "PYTHON": sys.executable}, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    rows = {r["part"]: r for r in json.loads(out.read_text())["rows"]}
    assert set(rows) == {"flow_dpo_step", "sample", "videoreward", "ray_deepspeed", "online"}
    assert not [r for r in rows.values() if "error" in r]
    assert rows["flow_dpo_step"]["loss"] == round(math.log(2), 5)  # LoRA at init: policy == reference
    assert rows["sample"]["frames_out"] == 9 and rows["videoreward"]["videos_per_s"] > 0
    assert "skipped" in rows["ray_deepspeed"] and "skipped" in rows["online"]
    assert proc.stdout.count("| part=") == 5  # the table
