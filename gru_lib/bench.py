"""``python -m gru_lib bench``: how fast each GRU backend runs, against ``nn.GRU`` and against ``torch.mm``.

For each shape (batch B, steps T, input size D, hidden size H) and each backend, the forward (under
``no_grad``) and the forward + backward (gradients of the parameters and the input) are timed with
``time.perf_counter``: ``--repeats`` rounds, and inside each round every backend once, in an order that rotates
between rounds (interleaved, so that a burst of load on a shared machine hits all backends alike). Reported:

- ``median_ms`` and ``speedup_vs_nn_gru`` = median of nn.GRU / median of the backend, measured in the same run;
- ``gflops``: achieved GFLOP/s with the GRU's count, forward ``6·B·T·H·(D+H)`` (the input projection
  ``2·T·B·D·3H`` and the recurrent products ``2·T·B·H·3H``), forward + backward 3x that (backward holds
  twice the forward's products); not given for MinGRU, which does other work;
- ``frac_of_mm``: that rate over the rate of ``torch.mm`` on the very products a GRU computes (the
  backend ``torch.mm``: one (T·B, D) x (D, 3H) product and T (B, H) x (H, 3H) products forward; backward adds
  T (B, 3H) x (3H, H), the two weight-gradient products and the input-gradient product), timed in the same
  rounds. An exact GRU cannot beat fraction 1 without faster matrix products;
- ``frac_of_onednn``: the same over the rate of those products through oneDNN (the backend ``oneDNN``,
  CPU only: PyTorch's ``mkldnn::_linear_pointwise``, the fixed weights packed once, as FastGRU does). On
  x86 ``torch.mm`` calls MKL, and which of the two is faster depends on the processor, so ``frac_of_mm`` above
  1 means "faster products than torch.mm's";
- ``peak_mb`` (``--memory``): the peak resident memory one call adds, in a fresh subprocess: after a warm-up
  call (and after the C++ kernels unmap the buffers they keep for reuse) the kernel's high-water mark is
  reset (``/proc/self/clear_refs``, Linux), the call runs, and the increase of ``VmHWM`` over the resident
  size before the call is recorded (:func:`gru_lib.memory.peak_rss_mb`). ``MALLOC_MMAP_THRESHOLD_`` is fixed
  so that every large buffer is mapped and unmapped (none hides in the heap between calls). This counts tensors, workspaces and allocator overhead
  alike.

Backends: ``nn.GRU``, ``gru_lib.GRU`` (chapter 3), ``FastGRU`` (chapter 6; without gradients its forward is
:mod:`gru_lib.inference`'s kernel), ``FastGRU-aten`` (FastGRU's training loop with ``torch.backends.mkldnn``
disabled and the gradient-free kernel off, so its products go through ATen/MKL: what oneDNN adds),
``FastGRU-bf16`` (under ``torch.autocast(dtype=torch.bfloat16)``), ``MinGRU-parallel`` and
``MinGRU-sequential`` (chapter 7), and the references ``torch.mm`` and ``oneDNN``.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

from gru_lib import inference, isa, memory, native
from gru_lib.errors import GruLibError
from gru_lib.memory import peak_rss_mb
from gru_lib.gemm import onednn_available, onednn_linear

__all__ = [
    "Shape",
    "BACKENDS",
    "sweep_shapes",
    "time_interleaved",
    "bench_shape",
    "run_bench",
    "measure_peak_memory",
    "GEMMReference",
    "mkldnn_enabled",
    "cpu_bf16_support",
]

BACKENDS: tuple[str, ...] = (
    "nn.GRU",
    "gru_lib.GRU",
    "FastGRU",
    "FastGRU-aten",
    "FastGRU-bf16",
    "MinGRU-parallel",
    "MinGRU-sequential",
)
MM = "torch.mm"
ONEDNN = "oneDNN"
REFERENCES: tuple[str, ...] = (MM, ONEDNN)
MODES: tuple[str, ...] = ("fwd", "fwd+bwd")
# The reference shape (B, T, D, H), the centre of every sweep.
BASE = (64, 64, 128, 256)
QUICK = {"steps": [16, 64, 256], "batch": [16, 64], "hidden": [128, 256]}
FULL = {"steps": [16, 64, 256, 1024, 4096], "batch": [1, 16, 64, 256], "hidden": [64, 128, 256, 512, 1024]}


NOISE = 0.05  # timings of the same code vary by a few percent between interleaved rounds


def speed_verdict(ratio: float, noise: float = NOISE) -> str:
    """``'faster than'``, ``'slower than'`` or ``'about as fast as'`` from a speed ratio (above 1: faster);
    ratios within ``1 ± noise`` are ``'about as fast as'``, so a 1% difference is never called a gain."""
    if ratio > 1 + noise:
        return "faster than"
    if ratio < 1 - noise:
        return "slower than"
    return "about as fast as"


@dataclass(frozen=True)
class Shape:
    batch: int
    steps: int
    input_size: int
    hidden: int

    def flops(self, mode: str) -> float:
        """The GRU's floating-point operations: forward 6·B·T·H·(D+H); forward + backward 3x that."""
        forward = 6.0 * self.batch * self.steps * self.hidden * (self.input_size + self.hidden)
        return forward if mode == "fwd" else 3.0 * forward


def sweep_shapes(base: Shape, steps: Sequence[int], batch: Sequence[int], hidden: Sequence[int]) -> list[Shape]:
    """The base shape and, one axis at a time, its variations (no duplicates, in sweep order)."""
    shapes = [base]
    shapes += [Shape(base.batch, t, base.input_size, base.hidden) for t in steps]
    shapes += [Shape(b, base.steps, base.input_size, base.hidden) for b in batch]
    shapes += [Shape(base.batch, base.steps, base.input_size, h) for h in hidden]
    return list(dict.fromkeys(shapes))


def cpu_bf16_support() -> str:
    """What the CPU offers for bfloat16 matrix products, from /proc/cpuinfo: AMX tiles, AVX-512 BF16 dot
    products, or neither (then oneDNN converts and computes in float32)."""
    try:
        flags = set(Path("/proc/cpuinfo").read_text().split())
    except OSError:
        return "unknown"
    if "amx_bf16" in flags:
        return "amx_bf16"
    if "avx512_bf16" in flags:
        return "avx512_bf16 (no AMX)"
    return "no bf16 instructions"


# ----------------------------------------------------------------------------------------------------------
# Backends


@dataclass
class _Runner:
    name: str
    module: nn.Module | None
    autocast: torch.dtype | None = None
    onednn: bool = True  # False: torch.backends.mkldnn disabled during the call


@contextlib.contextmanager
def mkldnn_enabled(enabled: bool) -> Iterator[None]:
    """``torch.backends.mkldnn.enabled`` set for the block (without the warning that
    ``torch.backends.mkldnn.flags`` prints about TF32 on this build)."""
    previous = torch.backends.mkldnn.enabled
    torch.backends.mkldnn.enabled = enabled
    try:
        yield
    finally:
        torch.backends.mkldnn.enabled = previous


def _make_runner(name: str, shape: Shape, state: dict[str, Tensor], device: torch.device) -> _Runner:
    from gru_lib.layer import GRU

    if name == "nn.GRU":
        module: nn.Module = nn.GRU(shape.input_size, shape.hidden)
    elif name == "gru_lib.GRU":
        module = GRU(shape.input_size, shape.hidden)
    elif name in ("FastGRU", "FastGRU-aten", "FastGRU-bf16"):
        from gru_lib.fast import FastGRU

        module = FastGRU(shape.input_size, shape.hidden)
    elif name.startswith("MinGRU-"):
        from gru_lib.mingru import MinGRU

        module = MinGRU(shape.input_size, shape.hidden, mode=name.removeprefix("MinGRU-"))
    else:
        raise GruLibError(f"bench: unknown backend {name!r} (choose from {', '.join(BACKENDS)})")
    if not name.startswith("MinGRU-"):
        module.load_state_dict(state)  # the exact GRUs compute the same function on the same weights
    autocast = torch.bfloat16 if name.endswith("-bf16") else None
    return _Runner(name, module.to(device), autocast, onednn=not name.endswith("-aten"))


class GEMMReference:
    """The matrix products of one GRU layer's forward (and backward), with nothing else, through ``torch.mm``
    or (``library="oneDNN"``) through oneDNN the way FastGRU calls it: the step weights packed once, the
    weight gradients from a transposed copy of the states / inputs."""

    def __init__(self, shape: Shape, device: torch.device, library: str = MM) -> None:
        b, t, d, h = shape.batch, shape.steps, shape.input_size, shape.hidden
        gen = torch.Generator().manual_seed(0)
        make = lambda *size: torch.randn(*size, generator=gen).to(device)  # noqa: E731
        self.steps, self.library = t, library
        self.x, self.w_ih_t, self.w_ih = make(t * b, d), make(d, 3 * h), make(3 * h, d)
        self.h, self.w_hh_t, self.w_hh = make(b, h), make(h, 3 * h), make(3 * h, h)
        self.g_step, self.g_all, self.h_all = make(b, 3 * h), make(t * b, 3 * h), make(t * b, h)
        if library == ONEDNN:
            pack = torch.ops.mkldnn._reorder_linear_weight
            self.w_hh_packed = pack(self.w_hh_t.t().contiguous(), b)  # h @ W_hh^T
            self.w_hh_t_packed = pack(self.w_hh.t().contiguous(), b)  # g @ W_hh

    def __call__(self, mode: str) -> None:
        if self.library == ONEDNN:
            self._onednn(mode)
            return
        torch.mm(self.x, self.w_ih_t)
        for _ in range(self.steps):
            torch.mm(self.h, self.w_hh_t)
        if mode == "fwd+bwd":
            for _ in range(self.steps):
                torch.mm(self.g_step, self.w_hh)
            torch.mm(self.g_all.t(), self.h_all)
            torch.mm(self.g_all.t(), self.x)
            torch.mm(self.g_all, self.w_ih)

    def _onednn(self, mode: str) -> None:
        onednn_linear(self.x, self.w_ih_t.t())
        for _ in range(self.steps):
            onednn_linear(self.h, self.w_hh_packed)
        if mode == "fwd+bwd":
            for _ in range(self.steps):
                onednn_linear(self.g_step, self.w_hh_t_packed)
            onednn_linear(self.h_all.t().contiguous(), self.g_all.t())
            onednn_linear(self.x.t().contiguous(), self.g_all.t())
            onednn_linear(self.g_all, self.w_ih.t())


def _call(runner: _Runner, x: Tensor, mode: str) -> None:
    assert runner.module is not None
    autocast = (
        torch.autocast(x.device.type, dtype=runner.autocast) if runner.autocast else contextlib.nullcontext()
    )
    # "-aten": FastGRU's own loop with ATen's products, so without the gradient-free kernel's product too
    loop_only = contextlib.nullcontext() if runner.onednn else inference.disabled()
    with mkldnn_enabled(runner.onednn), loop_only:
        if mode == "fwd":
            with torch.no_grad(), autocast:
                runner.module(x)
            return
        for p in runner.module.parameters():
            p.grad = None
        x.grad = None
        with autocast:
            out, _ = runner.module(x)
        out.float().sum().backward()


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(fn: Callable[[], None], device: torch.device) -> float:
    _sync(device)
    start = time.perf_counter()
    fn()
    _sync(device)
    return time.perf_counter() - start


def time_interleaved(
    jobs: dict[str, Callable[[], None]], repeats: int, device: torch.device | str = "cpu", warmup: bool = True
) -> dict[str, list[float]]:
    """Seconds per call of every job: ``repeats`` rounds, each running every job once in an order rotated by
    one per round (so slow phases of a shared machine fall on all jobs alike), after one warm-up call each."""
    device = torch.device(device)
    names = list(jobs)
    if warmup:
        for job in jobs.values():
            job()
    times: dict[str, list[float]] = {name: [] for name in names}
    for r in range(repeats):
        k = r % len(names)
        for name in names[k:] + names[:k]:
            times[name].append(_timed(jobs[name], device))
    return times


def bench_shape(
    shape: Shape, backends: Sequence[str], repeats: int, device: torch.device, notes: list[str]
) -> list[dict[str, object]]:
    """Times every backend (and torch.mm) on one shape, interleaved; returns one row per backend and mode."""
    torch.manual_seed(0)
    ref = nn.GRU(shape.input_size, shape.hidden)
    state = ref.state_dict()
    runners: dict[str, _Runner] = {}
    for name in backends:
        try:
            runners[name] = _make_runner(name, shape, state, device)
        except ImportError as error:
            note = f"{name} skipped: {error}"
            if note not in notes:
                notes.append(note)
    references = {MM: GEMMReference(shape, device)}
    if onednn_available(device):
        references[ONEDNN] = GEMMReference(shape, device, ONEDNN)
    x = torch.randn(shape.steps, shape.batch, shape.input_size, generator=torch.Generator().manual_seed(1))
    x = x.to(device).requires_grad_()
    names = list(runners) + list(references)
    jobs = {
        f"{name}|{mode}": (
            lambda n=name, m=mode: references[n](m) if n in references else _call(runners[n], x, m)
        )
        for name in names
        for mode in MODES
    }
    # The warm-up builds the C++ extension on first use, fills caches and touches first allocations.
    by_job = time_interleaved(jobs, repeats, device)
    times = {tuple(key.split("|")): values for key, values in by_job.items()}
    return _shape_rows(shape, names, times, repeats)


def _shape_rows(shape: Shape, names: Sequence[str], times: dict[tuple[str, ...], list[float]],
                repeats: int) -> list[dict[str, object]]:
    """One row per backend and mode from the timings ``times[(name, mode)]`` (module docstring)."""
    medians = {key: statistics.median(values) for key, values in times.items()}
    rows = []
    for name in names:
        for mode in MODES:
            median = medians[(name, mode)]
            exact_gru = not name.startswith("MinGRU-")
            gflops = shape.flops(mode) / median / 1e9 if exact_gru else float("nan")
            baseline = medians.get(("nn.GRU", mode))
            fractions = {
                f"frac_of_{'mm' if ref == MM else 'onednn'}": (
                    gflops / (shape.flops(mode) / medians[(ref, mode)] / 1e9)
                    if exact_gru and (ref, mode) in medians
                    else float("nan")
                )
                for ref in REFERENCES
            }
            rows.append(
                {
                    **asdict(shape),
                    "backend": name,
                    "mode": mode,
                    "median_ms": median * 1e3,
                    "min_ms": min(times[(name, mode)]) * 1e3,
                    "max_ms": max(times[(name, mode)]) * 1e3,
                    "repeats": repeats,
                    "speedup_vs_nn_gru": baseline / median if baseline else float("nan"),
                    "gflops": gflops,
                    **fractions,
                    "peak_mb": float("nan"),
                }
            )
    return rows


# ----------------------------------------------------------------------------------------------------------
# Peak memory, in a subprocess


def _memory_probe(spec: str) -> None:
    """Subprocess entry: prints {mode: peak MB added by one call} as JSON (see the module docstring)."""
    args = json.loads(spec)
    torch.set_num_threads(args["threads"])
    shape = Shape(**args["shape"])
    device = torch.device(args["device"])
    torch.manual_seed(0)
    state = nn.GRU(shape.input_size, shape.hidden).state_dict()
    runner = _make_runner(args["backend"], shape, state, device)
    x = torch.randn(shape.steps, shape.batch, shape.input_size, device=device, requires_grad=True)
    peaks = {}
    for mode in MODES:
        _call(runner, x, mode)  # warm-up
        native.release_cached_buffers()  # buffers kept for reuse would hide the call's own working set
        extra, _ = peak_rss_mb(functools.partial(_call, runner, x, mode))
        if extra is not None:
            peaks[mode] = extra
    print(json.dumps(peaks))


def measure_peak_memory(shape: Shape, backend: str, threads: int, device: torch.device) -> dict[str, float]:
    if device.type != "cpu" or not memory.measurable():
        return {}
    spec = json.dumps({"shape": asdict(shape), "backend": backend, "threads": threads, "device": str(device)})
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536")
    code = "import sys; from gru_lib.bench import _memory_probe; _memory_probe(sys.argv[1])"
    done = subprocess.run([sys.executable, "-c", code, spec], env=env, capture_output=True, text=True)
    if done.returncode != 0:
        return {}
    return json.loads(done.stdout.strip().splitlines()[-1])


# ----------------------------------------------------------------------------------------------------------


def run_bench(
    shapes: Sequence[Shape],
    backends: Sequence[str] = BACKENDS,
    repeats: int = 5,
    device: torch.device | str = "cpu",
    memory: str = "base",
    log: Callable[[str], None] | None = print,
) -> tuple[list[dict[str, object]], list[str]]:
    """Benchmarks every shape; returns the rows (see the module docstring) and notes (skipped backends)."""
    device = torch.device(device)
    notes: list[str] = []
    rows: list[dict[str, object]] = []
    for i, shape in enumerate(shapes):
        shape_rows = bench_shape(shape, backends, repeats, device, notes)
        if memory == "all" or (memory == "base" and i == 0):
            for name in {str(row["backend"]) for row in shape_rows} - set(REFERENCES):
                peaks = measure_peak_memory(shape, name, torch.get_num_threads(), device)
                for row in shape_rows:
                    if row["backend"] == name and row["mode"] in peaks:
                        row["peak_mb"] = peaks[str(row["mode"])]
        rows += shape_rows
        if log:
            log(f"[{i + 1}/{len(shapes)}] B={shape.batch} T={shape.steps} D={shape.input_size} H={shape.hidden}")
    return rows, notes


def _plot(frame, base: Shape, out: Path) -> list[Path]:  # noqa: ANN001
    from matplotlib.figure import Figure  # no pyplot: files only, the caller's backend is left alone

    written = []
    for axis, label in (("steps", "sequence length T"), ("batch", "batch B"), ("hidden", "hidden size H")):
        others = [c for c in ("batch", "steps", "input_size", "hidden") if c != axis]
        sel = frame
        for c in others:
            sel = sel[sel[c] == getattr(base, c)]
        if sel[axis].nunique() < 2:
            continue
        fig = Figure(figsize=(10, 4))
        panels = fig.subplots(1, 2, sharey=True)
        for panel, mode in zip(panels, MODES):
            contenders = (sel["mode"] == mode) & ~sel["backend"].isin(REFERENCES)
            for name, group in sel[contenders].groupby("backend", sort=False):
                group = group.sort_values(axis)
                panel.plot(group[axis], group["speedup_vs_nn_gru"], marker="o", label=name)
            panel.axhline(1.0, color="grey", lw=0.8)
            panel.set_xscale("log", base=2)
            panel.set_yscale("log", base=2)
            panel.set_xlabel(label)
            panel.set_title(f"{mode}: speedup over nn.GRU")
        panels[0].set_ylabel("nn.GRU time / backend time")
        panels[1].legend(fontsize=8)
        fig.tight_layout()
        path = out / f"speedup_{axis}.png"
        fig.savefig(path, dpi=110)
        written.append(path)
    return written


def bench_command(
    *, full: bool, shape: Sequence[int], steps: Sequence[int] | None, batch: Sequence[int] | None,
    hidden: Sequence[int] | None, backends: str, repeats: int, threads: int | None, memory: str, device: str,
    out: Path,
) -> int:
    """``python -m gru_lib bench`` (its flags, :mod:`gru_lib.cli`, have these names): run the sweeps, write
    ``bench.csv`` and the plots into ``out``, print the table at the base shape."""
    import pandas as pd

    base, names, device_ = _check_bench_arguments(shape, repeats, backends, device, threads)
    sweep = FULL if full else QUICK
    shapes = sweep_shapes(base, steps or sweep["steps"], batch or sweep["batch"], hidden or sweep["hidden"])
    print(isa.describe())
    print(f"threads={torch.get_num_threads()} cpu={torch.backends.cpu.get_cpu_capability()} "
          f"bf16={cpu_bf16_support()} device={device_}")
    rows, notes = run_bench(shapes, names, repeats, device_, memory)
    frame = pd.DataFrame(rows)
    frame["threads"] = torch.get_num_threads()
    try:
        out.mkdir(parents=True, exist_ok=True)
        csv = out / "bench.csv"
        frame.to_csv(csv, index=False, float_format="%.6g")
    except OSError as error:
        raise GruLibError(f"--out {out}: cannot write ({error.strerror or error})") from None
    plots = _plot(frame, base, out)
    at_base = frame[(frame["batch"] == base.batch) & (frame["steps"] == base.steps)
                    & (frame["hidden"] == base.hidden) & (frame["input_size"] == base.input_size)]
    columns = ["backend", "mode", "median_ms", "speedup_vs_nn_gru", "gflops", "frac_of_mm", "frac_of_onednn",
               "peak_mb"]
    print(f"\nAt B={base.batch} T={base.steps} D={base.input_size} H={base.hidden} "
          f"(medians of {repeats} interleaved rounds):")
    print(at_base[columns].to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    for note in notes:
        print(f"note: {note}")
    print(f"wrote {csv}" + "".join(f", {p}" for p in plots))
    return 0


def _check_bench_arguments(
    shape: Sequence[int], repeats: int, backends: str, device: str, threads: int | None
) -> tuple[Shape, list[str], torch.device]:
    """The base shape, the backends (nn.GRU first) and the device; sets ``threads``. One-line errors."""
    if len(shape) != 4:
        raise GruLibError(f"--shape: expected B,T,D,H (4 integers), got {len(shape)}")
    if repeats < 1:
        raise GruLibError(f"--repeats: must be at least 1, got {repeats}")
    names = [b.strip() for b in backends.split(",") if b.strip()]
    unknown = [b for b in names if b not in BACKENDS]
    if unknown:
        raise GruLibError(f"--backends: unknown {', '.join(unknown)} (choose from {', '.join(BACKENDS)})")
    if "nn.GRU" not in names:
        names.insert(0, "nn.GRU")  # every ratio is to nn.GRU in the same run
    device_ = torch.device(device)
    if device_.type == "cuda" and not torch.cuda.is_available():
        raise GruLibError("--device cuda: no CUDA device is available")
    if threads is not None:
        if threads < 1:
            raise GruLibError(f"--threads: must be at least 1, got {threads}")
        torch.set_num_threads(threads)
    return Shape(*shape), names, device_
