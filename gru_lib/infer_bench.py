"""Measurements for gru_lib.inference (csrc/gru_infer.cpp): the hardware bound of one step, and the kernel
against nn.GRU, FastGRU and (when installed) ONNX Runtime and OpenVINO, in the same process.

    python -m gru_lib.infer_bench bound                       # L2 read bandwidth, FMA peak, per-step bound
    python -m gru_lib.infer_bench compare -B 1 -T 512 -n 1    # interleaved rounds, medians, ratios

On a shared machine only the ratios of one run mean something: every method runs once per round, in the
same order, and each row reports the median (and the minimum) over the rounds. ``--clock cpu`` times this
process's CPU time instead of the wall clock (one thread on a busy machine); ``--variants`` adds the kernel
forced to each threading mode; OpenVINO runs twice, with the f32 hint and with its default precision
(bf16 on CPUs with AMX, not exact: see the last column).
"""

from __future__ import annotations

import argparse
import ctypes
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from gru_lib import inference, isa
from gru_lib.cli import OneLineParser, positive_float, positive_int, thread_count
from gru_lib.fast import fast_gru_scan

# ---- The bound: one core's L2 read bandwidth and FMA peak, from a small C program ----

# GCC vector extensions of the register width of the kernel's path (gru_lib.isa): 16 floats on avx512, 8 on
# avx2, 4 on the portable baseline (SSE2, NEON); no intrinsics, so it builds and runs on any CPU. CHAINS
# independent FMA chains fill the pipelines without spilling registers (16 of 32 zmm; 10 of 16 ymm or xmm).
_MICRO = r"""
#include <time.h>
typedef float v16 __attribute__((vector_size(4 * WIDTH)));
static double now(void) { struct timespec t; clock_gettime(CLOCK_MONOTONIC, &t); return t.tv_sec + 1e-9 * t.tv_nsec; }
static float total(const v16* s, int n) {
  v16 t = s[0]; for (int i = 1; i < n; ++i) t += s[i];
  float sum = 0; for (int i = 0; i < WIDTH; ++i) sum += t[i];
  return sum;
}
/* Bytes per second reading n floats (64-byte aligned) reps times, 8 independent accumulators. */
double l2_read(const float* a, long n, long reps, float* sink) {
  v16 s[8] = {0};
  double t0 = now();
  for (long r = 0; r < reps; ++r)
    for (long i = 0; i + 8 * WIDTH <= n; i += 8 * WIDTH)
#pragma GCC unroll 8
      for (int u = 0; u < 8; ++u) s[u] += *(const v16*)(a + i + WIDTH * u);
  double dt = now() - t0;
  *sink = total(s, 8);
  return (double)n * 4 * reps / dt;
}
/* float32 FLOP per second of fused multiply-adds, CHAINS independent chains of WIDTH floats. */
double fma_peak(long iters, float* sink) {
  v16 s[CHAINS]; const v16 a = (v16){0} + 0.999f, b = (v16){0} + 1e-3f;
  for (int i = 0; i < CHAINS; ++i) s[i] = (v16){0} + (float)i;
  double t0 = now();
  for (long k = 0; k < iters; ++k)
#pragma GCC unroll 16
    for (int u = 0; u < CHAINS; ++u) s[u] = s[u] * a + b;
  double dt = now() - t0;
  *sink = total(s, CHAINS);
  return (double)iters * CHAINS * WIDTH * 2 / dt;
}
"""
_MICRO_FLAGS = {"avx512": ["-mavx512f", "-mfma", "-DWIDTH=16", "-DCHAINS=16"],
                "avx2": ["-mavx2", "-mfma", "-DWIDTH=8", "-DCHAINS=10"], "portable": ["-DWIDTH=4", "-DCHAINS=10"]}


def _micro() -> ctypes.CDLL:
    build = Path(tempfile.mkdtemp(prefix="infer_bench_"))
    (build / "micro.c").write_text(_MICRO)
    flags = _MICRO_FLAGS[isa.selected()]
    subprocess.run(["gcc", "-O3", "-ffp-contract=fast", *flags, "-shared", "-fPIC", "-o",
                    str(build / "micro.so"), str(build / "micro.c")], check=True)
    lib = ctypes.CDLL(str(build / "micro.so"))
    lib.l2_read.restype = lib.fma_peak.restype = ctypes.c_double
    lib.l2_read.argtypes = [ctypes.c_void_p, ctypes.c_long, ctypes.c_long, ctypes.c_void_p]
    lib.fma_peak.argtypes = [ctypes.c_long, ctypes.c_void_p]
    return lib


def bound(hidden: int, rounds: int) -> None:
    """Print the best-of-rounds L2 read rate of one W_hh-sized array, the FMA peak of one core, and the
    per-step bound at B=1: max(bytes / bandwidth, flops / peak) for one thread, and for two (each thread
    reads half the weight from its own core's L2)."""
    lib = _micro()
    n = 3 * hidden * hidden
    a = torch.empty(n + 16)
    offset = (-a.data_ptr() // 4) % 16  # 64-byte aligned start
    buf = a[offset: offset + n].fill_(1.0)
    sink = torch.zeros(1)
    lib.l2_read(buf.data_ptr(), n, 50, sink.data_ptr())  # warm the cache
    bw = max(lib.l2_read(buf.data_ptr(), n, 20, sink.data_ptr()) for _ in range(rounds))
    peak = max(lib.fma_peak(200_000, sink.data_ptr()) for _ in range(rounds))
    nbytes, flops = 4 * n, 2 * n
    print(isa.describe())
    print(f"W_hh: {nbytes / 1e3:.0f} kB, {flops / 1e6:.3f} MFLOP per step at B=1 (H={hidden})")
    print(f"L2 read, one core: {bw / 1e9:.1f} GB/s   FMA peak, one core: {peak / 1e9:.1f} GFLOP/s")
    for threads in (1, 2):
        t_mem, t_fma = nbytes / threads / bw * 1e6, flops / threads / peak * 1e6
        print(f"{threads} thread(s): bytes/bandwidth {t_mem:.2f} us, flops/peak {t_fma:.2f} us "
              f"-> bound {max(t_mem, t_fma):.2f} us per step")


# ---- Comparison ----

def _export(gru: nn.GRU, x: torch.Tensor, path: Path) -> None:
    """``gru``'s output y as ONNX with x's static shape (the runtimes may specialise to it)."""
    import contextlib
    import io
    import warnings

    class _Output(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.gru = gru

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.gru(x)[0]

    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(_Output().eval(), (x,), dynamo=True, opset_version=18, input_names=["x"],
                          output_names=["y"]).save(str(path))


def _runtimes(gru: nn.GRU, threads: int, x: torch.Tensor) -> dict[str, Callable[[], object]]:
    """ONNX Runtime and OpenVINO (float32) sessions of ``gru``, where they import."""
    found: dict[str, Callable[[], object]] = {}
    path = Path(tempfile.mkdtemp(prefix="infer_bench_")) / "gru.onnx"
    try:
        _export(gru, x, path)
    except Exception as error:  # no onnxscript / exporter failure: compare without runtimes
        print(f"(no ONNX export: {type(error).__name__}: {error})")
        return found
    feed = x.numpy()
    try:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        found["onnxruntime"] = lambda: session.run(None, {"x": feed})
    except ImportError:
        pass
    try:
        import openvino as ov

        core = ov.Core()
        f32 = core.compile_model(str(path), "CPU", {"INFERENCE_NUM_THREADS": threads,
                                                    "INFERENCE_PRECISION_HINT": "f32"})
        default = core.compile_model(str(path), "CPU", {"INFERENCE_NUM_THREADS": threads})
        hint = default.get_property("INFERENCE_PRECISION_HINT").get_type_name()  # bf16 on AMX CPUs
        requests = {"openvino f32": f32.create_infer_request(), f"openvino {hint}": default.create_infer_request()}
        for name, request in requests.items():
            found[name] = lambda request=request: request.infer({0: feed})[0]
    except ImportError:
        pass
    return found


def compare(batch: int, steps: int, threads: int, rounds: int, inputs: int, hidden: int, runtimes: bool,
            variants: bool, clock: str, budget: float) -> None:
    """Median (and min) time of each method over interleaved rounds; ``clock`` "wall" (perf_counter) or
    "cpu" (process_time: this process's CPU time, all its threads, so time spent preempted by other work on
    a busy machine does not count; meaningful for one thread). Stops after ``budget`` seconds of rounds
    (at least 3 rounds), so a busy machine is not held longer."""
    timer = time.perf_counter if clock == "wall" else time.process_time
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    gru = nn.GRU(inputs, hidden).eval()
    x = torch.randn(steps, batch, inputs)
    h0 = torch.zeros(batch, hidden)
    w = (gru.weight_ih_l0, gru.weight_hh_l0, gru.bias_ih_l0, gru.bias_hh_l0)
    methods: dict[str, Callable[[], object]] = {
        "nn.GRU": lambda: gru(x),
        "FastGRU": lambda: fast_gru_scan(x, h0, None, *w),
        "infer": lambda: inference.gru_infer_scan(x, h0, *w),
    }
    if variants:
        methods["infer rows"] = lambda: inference.gru_infer_scan(x, h0, *w, mode="rows")
        methods["infer cols"] = lambda: inference.gru_infer_scan(x, h0, *w, mode="cols")
    if runtimes:
        methods.update(_runtimes(gru, threads, x))
    times: dict[str, list[float]] = {name: [] for name in methods}
    with torch.no_grad():
        ref = gru(x)[0]
        error = float((inference.gru_infer_scan(x, h0, *w)[0] - ref).abs().max())
        if error > 1e-5:
            raise SystemExit(f"gru_infer_scan differs from nn.GRU by {error:.2e}")
        for fn in methods.values():  # warm-up: builds, packs, first touch
            fn()
        began = time.perf_counter()
        for done in range(rounds):
            if done >= 3 and time.perf_counter() - began > budget:
                break
            for name, fn in methods.items():
                start = timer()
                fn()
                times[name].append(timer() - start)
        errors = {name: float((torch.as_tensor(_first(fn())) - ref).abs().max()) for name, fn in methods.items()}
    medians = {name: statistics.median(ts) for name, ts in times.items()}
    base, base_min = medians["infer"], min(times["infer"])
    rounds = len(times["infer"])
    print(f"B={batch} T={steps} D={inputs} H={hidden} threads={threads} rounds={rounds} clock={clock} "
          f"(auto mode: {inference.choose_mode(batch)}); ratio = method / infer")
    print(f"  {'method':16s} {'median ms':>10s} {'us/step':>8s} {'ratio':>6s} | {'min ms':>8s} {'us/step':>8s} "
          f"{'ratio':>6s} | max |diff| vs nn.GRU")
    for name, m in medians.items():
        low = min(times[name])
        print(f"  {name:16s} {m * 1e3:10.3f} {m / steps * 1e6:8.2f} {m / base:6.2f} | {low * 1e3:8.3f} "
              f"{low / steps * 1e6:8.2f} {low / base_min:6.2f} | {errors[name]:.1e}")


def _first(result: object) -> object:
    """The output sequence of a method's result (a tuple's first element, else the result)."""
    while isinstance(result, (tuple, list)):
        result = result[0]
    return result


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The flags of ``python -m gru_lib.infer_bench``; a size, count or budget out of range is a one-line
    usage error (exit 2) naming the flag (:class:`gru_lib.cli.OneLineParser` and its argparse types)."""
    parser = OneLineParser(prog="python -m gru_lib.infer_bench", description=__doc__,
                           formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("what", choices=["bound", "compare"])
    parser.add_argument("-B", "--batch", type=positive_int, default=1)
    parser.add_argument("-T", "--steps", type=positive_int, default=512)
    parser.add_argument("-D", "--inputs", type=positive_int, default=128)
    parser.add_argument("-H", "--hidden", type=positive_int, default=256)
    parser.add_argument("-n", "--threads", type=thread_count, default=1)
    parser.add_argument("-r", "--rounds", type=positive_int, default=15)
    parser.add_argument("--no-runtimes", action="store_true", help="skip ONNX Runtime and OpenVINO")
    parser.add_argument("--variants", action="store_true", help="also the kernel with mode rows and cols")
    parser.add_argument("--clock", choices=["wall", "cpu"], default="wall")
    parser.add_argument("--budget", type=positive_float, default=25.0, help="seconds of timed rounds at most")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``bound`` or ``compare``; 0 when done (usage mistakes exit 2 while parsing)."""
    args = parse_args(argv)
    if args.what == "bound":
        bound(args.hidden, args.rounds)
    else:
        compare(args.batch, args.steps, args.threads, args.rounds, args.inputs, args.hidden, not args.no_runtimes,
                args.variants, args.clock, args.budget)
    return 0


if __name__ == "__main__":
    sys.exit(main())
