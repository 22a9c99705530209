"""``python -m gru_lib.infer_bench``: out-of-range flags are one-line usage errors (exit 2) naming the flag, and
``compare`` runs on this CPU's kernel path (AVX-512, AVX2 or portable) with any batch size."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from gru_lib.infer_bench import main

ROOT = Path(__file__).resolve().parents[1]
SMALL = ["-T", "4", "-H", "16", "-D", "8", "-r", "1", "--no-runtimes"]


@pytest.mark.parametrize("flags, words", [
    (["-n", "0"], ["-n/--threads", ">= 1"]),
    (["-n", "99999999999999999999"], ["-n/--threads", "<= 4096"]),
    (["--threads", str(10**12)], ["-n/--threads", "<= 4096"]),
    (["-r", "0"], ["-r/--rounds", ">= 1"]),
    (["-T", "0"], ["-T/--steps", ">= 1"]),
    (["-B", "0"], ["-B/--batch", ">= 1"]),
    (["-H", "-5"], ["-H/--hidden", ">= 1", "'-5'"]),
    (["-D", "0"], ["-D/--inputs", ">= 1"]),
    (["-B", "two"], ["-B/--batch", "integer", "'two'"]),
    (["--budget", "-1"], ["--budget", "> 0", "'-1'"]),
    (["--budget", "nan"], ["--budget", "finite"]),
    (["--clock", "sundial"], ["--clock", "'sundial'"]),
])
def test_out_of_range_flags_are_one_line_errors(capsys: pytest.CaptureFixture[str], flags: list[str],
                                                words: list[str]) -> None:
    with pytest.raises(SystemExit) as stop:
        main(["compare", *flags])
    err = capsys.readouterr().err
    assert stop.value.code == 2, err
    assert err.count("\n") == 1 and err.startswith("error: python -m gru_lib.infer_bench: "), err
    assert "Traceback" not in err
    for word in words:
        assert word in err, (word, err)


@pytest.mark.subprocess
@pytest.mark.parametrize("batch", ["1", "16"])
def test_compare_runs_on_this_cpu(batch: str) -> None:
    """On a CPU without AVX-512 the kernel takes its AVX2 (or portable) path: B=16 runs, and the kernel agrees
    with nn.GRU (compare exits 1 when it differs by more than 1e-5)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-m", "gru_lib.infer_bench", "compare", "-B", batch, *SMALL],
                          capture_output=True, text=True, cwd=ROOT, env=env, timeout=600)
    assert done.returncode == 0, done.stderr
    assert f"B={batch} T=4 D=8 H=16" in done.stdout
    rows = {line.split()[0] for line in done.stdout.splitlines()[2:]}
    assert {"nn.GRU", "FastGRU", "infer"} <= rows, done.stdout
