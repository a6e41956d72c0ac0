"""Every benchmark runs at a toy size, so none can rot unnoticed (nothing about speed is asserted)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).parent.parent / "benchmarks"

#: Each benchmark with arguments that make it run in seconds on lavapipe.
TOY = {
    "browser_models.py": ["--quick"],
    "conv.py": ["--quick"],
    "end_to_end.py": ["--sizes", "64", "--repeat", "1", "--transport-mb", "1", "--chain", "64"],
    "fleet.py": ["--n", "128", "--slowdowns", "1", "--repeat", "1"],
    "gpu_clock.py": ["--n", "64", "--idle", "0", "--repeat", "1"],
    "gpu_matmul.py": ["--sizes", "64", "--budget", "0.01"],
    "link.py": ["--quick"],
    "models.py": ["--quick"],
    "tensor_ops.py": ["--quick"],
}


def test_every_benchmark_has_a_toy_size():
    assert sorted(p.name for p in BENCHMARKS.glob("*.py")) == sorted(TOY)


@pytest.mark.parametrize("script", sorted(TOY))
def test_a_benchmark_runs_at_toy_size(script: str) -> None:
    done = subprocess.run(
        [sys.executable, str(BENCHMARKS / script), *TOY[script]],
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "XDG_RUNTIME_DIR": os.environ.get("XDG_RUNTIME_DIR", "/tmp")},
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert done.stdout.strip(), "a benchmark prints its figures"
