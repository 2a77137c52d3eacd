"""benchmarks/gpu_check.py cannot rot: its CPU fallback runs every path here (a GPU machine runs the
same paths on CUDA), and asking for CUDA where there is none exits 2 with a message."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "gpu_check.py"
PATHS = ("supervised", "contrastive", "prompt", "lora", "features", "serve", "onnx")


def _run(args, tmp_path, timeout=300) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT / "src"), os.environ.get("PYTHONPATH")])),
           "DERMKIT_CACHE": str(tmp_path / "cache")}
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, env=env,
                          cwd=tmp_path, timeout=timeout)


def test_cpu_fallback_runs_every_path(tmp_path):
    out = tmp_path / "table.json"
    # Without a GPU no --device is needed (and the script must say it falls back); with one, ask for the CPU.
    device = ["--device", "cpu"] if torch.cuda.is_available() else []
    proc = _run([*device, "--preset", "tiny", "--threads", "1", "--out", str(out)], tmp_path)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    if not device:
        assert "no CUDA GPU present: running the CPU fallback" in proc.stdout
    table = json.loads(out.read_text())
    rows = {r["path"]: r for r in table["rows"]}
    assert tuple(rows) == PATHS
    for name, row in rows.items():
        allowed = ("OK", "SKIPPED") if name == "onnx" else ("OK",)
        assert row["status"] in allowed, f"{name}: {row['status']} {row['error']}"
        if row["status"] == "OK":
            assert row["device"] == "cpu" and row["speed"] != "-" and row["what"], row
    for name in ("supervised", "contrastive", "prompt", "lora"):  # the training paths ran under bf16 autocast
        assert rows[name]["dtype"] == "bf16" and rows[name]["details"]["optimizer_steps"] >= 2
    assert rows["supervised"]["details"]["channels_last"] is True
    for name in PATHS:  # the printed table lists every path
        assert f"| {name} " in proc.stdout


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a CUDA GPU")
def test_asking_for_cuda_without_a_gpu_exits_2_with_a_message(tmp_path):
    proc = _run(["--device", "cuda"], tmp_path, timeout=120)
    assert proc.returncode == 2
    assert "no CUDA GPU is present" in proc.stderr and "--device cpu" in proc.stderr
    assert "| supervised" not in proc.stdout  # nothing ran
