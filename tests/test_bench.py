"""`python -m gru_lib bench` runs a tiny sweep and writes its CSV (a smoke test: no timing is asserted)."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
import torch

from gru_lib.bench import MODES, Shape, _shape_rows, measure_peak_memory, sweep_shapes, time_interleaved
from gru_lib.gemm import onednn_available
from gru_lib.cli import main


def test_sweep_shapes_vary_one_axis_at_a_time() -> None:
    base = Shape(4, 8, 3, 5)
    shapes = sweep_shapes(base, steps=[2, 8], batch=[1], hidden=[5, 7])
    assert shapes[0] == base and len(shapes) == len(set(shapes)) == 4
    assert all(sum(getattr(s, f) != getattr(base, f) for f in ("batch", "steps", "hidden")) <= 1 for s in shapes)
    assert base.flops("fwd+bwd") == 3 * base.flops("fwd") == 3 * 6 * 4 * 8 * 5 * (3 + 5)


def test_time_interleaved_rotates_the_order_and_times_every_call() -> None:
    calls: list[str] = []
    jobs = {name: (lambda name=name: calls.append(name)) for name in "abc"}
    times = time_interleaved(jobs, repeats=4)
    assert calls == list("abc") + list("abc" "bca" "cab" "abc")  # warm-up, then one rotation per round
    assert {name: len(values) for name, values in times.items()} == {"a": 4, "b": 4, "c": 4}
    assert all(t >= 0 for values in times.values() for t in values)
    calls.clear()
    time_interleaved(jobs, repeats=1, warmup=False)
    assert calls == list("abc")


def test_rows_are_computed_from_the_medians() -> None:
    shape = Shape(2, 3, 4, 5)
    seconds = {"nn.GRU": [4.0, 2.0, 3.0], "FastGRU": [1.0, 1.5, 9.0], "torch.mm": [0.5, 0.5, 0.5],
               "MinGRU-scan": [2.0, 2.0, 2.0]}
    times = {(name, mode): values for name, values in seconds.items() for mode in MODES}
    rows = {row["backend"]: row for row in _shape_rows(shape, list(seconds), times, repeats=3) if row["mode"] == "fwd"}
    fast = rows["FastGRU"]
    assert (fast["median_ms"], fast["min_ms"], fast["max_ms"]) == (1500.0, 1000.0, 9000.0)
    assert fast["speedup_vs_nn_gru"] == pytest.approx(3.0 / 1.5)
    assert fast["gflops"] == pytest.approx(shape.flops("fwd") / 1.5 / 1e9)
    assert fast["frac_of_mm"] == pytest.approx(0.5 / 1.5)
    assert rows["MinGRU-scan"]["gflops"] != rows["MinGRU-scan"]["gflops"]  # NaN: not the GRU's arithmetic


@pytest.mark.slow
def test_bench_writes_csv_and_plots(tmp_path: Path, restore_threads: None, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "bench"
    argv = ["bench", "--shape", "3,4,5,6", "--steps", "2,4", "--batch", "3", "--hidden", "6", "--repeats", "2",
            "--memory", "none", "--threads", "1", "--backends", "gru_lib.GRU,FastGRU,FastGRU-aten,FastGRU-bf16", "--out", str(out)]
    assert main(argv) == 0
    with open(out / "bench.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    backends = {"nn.GRU", "gru_lib.GRU", "FastGRU", "FastGRU-aten", "FastGRU-bf16", "torch.mm"}  # nn.GRU: always
    if onednn_available():
        backends.add("oneDNN")
    assert {r["backend"] for r in rows} == backends
    assert len(rows) == 2 * len(backends) * len(MODES)  # shapes (T=4 is the base) x backends x modes
    medians = {(r["steps"], r["mode"], r["backend"]): float(r["median_ms"]) for r in rows}
    for row in rows:
        assert float(row["median_ms"]) > 0 and int(row["repeats"]) == 2
        reference = medians[(row["steps"], row["mode"], "nn.GRU")]
        assert float(row["speedup_vs_nn_gru"]) == pytest.approx(reference / float(row["median_ms"]), rel=1e-4)
    assert (out / "speedup_steps.png").stat().st_size > 0
    assert "At B=3 T=4 D=5 H=6" in capsys.readouterr().out


def test_bench_rejects_bad_arguments(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["bench", "--shape", "1,2", "--out", str(tmp_path)]) == 2
    assert "error: --shape" in capsys.readouterr().err
    assert main(["bench", "--backends", "cuDNN", "--out", str(tmp_path)]) == 2
    assert "error: --backends: unknown cuDNN" in capsys.readouterr().err


@pytest.mark.slow
@pytest.mark.subprocess
def test_peak_memory_probe_measures_a_call() -> None:
    peaks = measure_peak_memory(Shape(16, 64, 32, 128), "FastGRU", threads=1, device=torch.device("cpu"))
    if not Path("/proc/self/clear_refs").exists():
        pytest.skip("no /proc/self/clear_refs on this system")
    assert set(peaks) == set(MODES)
    # Forward + backward holds the saved gates and their gradients (T*B*4H floats each, 2 MB here) at once.
    assert peaks["fwd+bwd"] > peaks["fwd"] >= 0 and peaks["fwd+bwd"] > 3.5, peaks


@pytest.mark.parametrize("ratio, expected", [(1.2, "faster than"), (1.04, "about as fast as"),
                                             (0.96, "about as fast as"), (0.8, "slower than")])
def test_speed_verdict_calls_small_differences_a_tie(ratio: float, expected: str) -> None:
    from gru_lib.bench import speed_verdict

    assert speed_verdict(ratio) == expected
    assert speed_verdict(1.04, noise=0.01) == "faster than"
