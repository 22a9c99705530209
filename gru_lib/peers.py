"""``python -m gru_lib bench --peers``: one GRU layer in other runtimes, beside ``nn.GRU`` and ``FastGRU``.

Every peer computes the function of one ``nn.GRU`` (time-major input (T, B, D), output (T, B, dirs * H)) with
that module's weights:

- ``nn.GRU``: the reference; ``FastGRU`` (chapter 6): its ``state_dict`` loaded as is;
- ``onnxruntime`` and ``openvino``: an ONNX graph of ``GRU`` nodes (:func:`onnx_gru_model`), run by ONNX
  Runtime (CPU) and compiled by OpenVINO (CPU, ``INFERENCE_PRECISION_HINT`` f32, so it never computes in
  bf16). PyTorch stacks the gates r|z|n, ONNX's ``GRU`` z|r|n, so per layer and direction::

      W = [W_iz; W_ir; W_in]   R = [W_hz; W_hr; W_hn]   B = [b_iz; b_ir; b_in; b_hz; b_hr; b_hn]

  and ``linear_before_reset=1`` is PyTorch's candidate ``n = tanh(W_in x + b_in + r * (W_hn h + b_hn))``.

Before any timing each peer's forward output on the bench input is compared with ``nn.GRU``'s in float64 (the
same weights): a peer more than :data:`TOLERANCE` away (max absolute difference) is reported and left out,
``nn.GRU`` included. All peers get the same thread
count: ``torch.get_num_threads()`` (ONNX Runtime's ``intra_op_num_threads``, OpenVINO's
``INFERENCE_NUM_THREADS``). The rounds are interleaved (:func:`gru_lib.bench.time_interleaved`) and the
medians reported with each peer's ratio to the fastest. ONNX Runtime and OpenVINO run inference only, so
forward + backward compares ``nn.GRU`` and ``FastGRU``. A peer whose package is missing is skipped with a note
(``make peers`` installs them: the ``peers`` extra).
"""

from __future__ import annotations

import copy
import importlib.metadata
import importlib.util
import os
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from gru_lib.bench import Shape, time_interleaved

__all__ = ["PEERS", "TOLERANCE", "ONNX_ORDER", "DEFAULT_FORWARD", "DEFAULT_BACKWARD", "reorder_gates",
           "onnx_gru_tensors", "onnx_gru_model", "ort_runner", "openvino_runner", "missing_peer_note",
           "Peer", "make_peer", "openvino_layer_types", "check_peers", "bench_peer_shape", "bench_peers",
           "peer_versions", "format_peer_table", "shape_bytes", "available_memory",
           "memory_shortfall"]

PEERS: tuple[str, ...] = ("nn.GRU", "FastGRU", "onnxruntime", "openvino")
INFERENCE_ONLY: tuple[str, ...] = ("onnxruntime", "openvino")
TOLERANCE = 1e-5
ONNX_ORDER: tuple[int, int, int] = (1, 0, 2)  # ONNX's z|r|n taken from PyTorch's r|z|n
DEFAULT_FORWARD: tuple[Shape, ...] = (Shape(64, 64, 128, 256), Shape(1, 512, 128, 256), Shape(16, 1024, 128, 256))
DEFAULT_BACKWARD: tuple[Shape, ...] = (Shape(64, 64, 128, 256),)
OPSET = 18
MAKE_TARGET = "make peers"


# ------------------------------------------------------------------------------------------- weights as ONNX


def reorder_gates(weight: Tensor, order: Sequence[int] = ONNX_ORDER) -> Tensor:
    """The three gate blocks of ``weight`` ((3H, ...) or (3H,), stacked r|z|n) in ``order``: the default
    gives ONNX's z|r|n."""
    blocks = weight.chunk(3, dim=0)
    return torch.cat([blocks[i] for i in order], dim=0)


def onnx_gru_tensors(gru: nn.GRU, layer: int, order: Sequence[int] = ONNX_ORDER) -> dict[str, np.ndarray]:
    """ONNX ``GRU`` inputs ``W`` (dirs, 3H, D), ``R`` (dirs, 3H, H), ``B`` (dirs, 6H) of ``layer`` of ``gru``
    (module docstring); gates permuted by ``order``; zero biases when ``gru`` has none."""
    suffixes = ("", "_reverse") if gru.bidirectional else ("",)
    state = {name: value.detach().float().cpu() for name, value in gru.state_dict().items()}
    w, r, b = [], [], []
    for s in suffixes:
        w_ih, w_hh = state[f"weight_ih_l{layer}{s}"], state[f"weight_hh_l{layer}{s}"]
        b_ih = state.get(f"bias_ih_l{layer}{s}", torch.zeros(w_ih.shape[0]))
        b_hh = state.get(f"bias_hh_l{layer}{s}", torch.zeros(w_hh.shape[0]))
        w.append(reorder_gates(w_ih, order))
        r.append(reorder_gates(w_hh, order))
        b.append(torch.cat([reorder_gates(b_ih, order), reorder_gates(b_hh, order)]))
    return {name: torch.stack(t).numpy() for name, t in (("W", w), ("R", r), ("B", b))}


def onnx_gru_model(gru: nn.GRU, order: Sequence[int] = ONNX_ORDER) -> Any:
    """An ``onnx.ModelProto`` computing ``gru``'s output: input ``x`` and output ``y`` laid out as ``gru``'s
    (batch first or not), T and B dynamic; one ``GRU`` node per layer (``linear_before_reset=1``), its
    output Y (T, dirs, B, H) transposed and reshaped to (T, B, dirs * H) for the next layer."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    if gru.proj_size:
        raise ValueError("onnx_gru_model: a GRU has no proj_size")
    dirs, hidden = (2 if gru.bidirectional else 1), gru.hidden_size
    nodes, inits = [], [numpy_helper.from_array(np.array([0, 0, dirs * hidden], dtype=np.int64), "merge_shape")]
    current = "x"
    if gru.batch_first:
        nodes.append(helper.make_node("Transpose", ["x"], ["x_tbd"], perm=[1, 0, 2]))
        current = "x_tbd"
    for layer in range(gru.num_layers):
        for name, array in onnx_gru_tensors(gru, layer, order).items():
            inits.append(numpy_helper.from_array(array, f"{name}_{layer}"))
        nodes += [
            helper.make_node("GRU", [current, f"W_{layer}", f"R_{layer}", f"B_{layer}"], [f"Y_{layer}"],
                             hidden_size=hidden, linear_before_reset=1,
                             direction="bidirectional" if dirs == 2 else "forward"),
            helper.make_node("Transpose", [f"Y_{layer}"], [f"Yt_{layer}"], perm=[0, 2, 1, 3]),
            helper.make_node("Reshape", [f"Yt_{layer}", "merge_shape"], [f"h_{layer}"]),
        ]
        current = f"h_{layer}"
    nodes.append(helper.make_node("Transpose", [current], ["y"], perm=[1, 0, 2]) if gru.batch_first
                 else helper.make_node("Identity", [current], ["y"]))
    axes = ["batch", "steps"] if gru.batch_first else ["steps", "batch"]
    graph = helper.make_graph(
        nodes, "gru", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [*axes, gru.input_size])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [*axes, dirs * hidden])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = min(model.ir_version, 10)  # what older runtimes read
    onnx.checker.check_model(model)
    return model


# ----------------------------------------------------------------------------------------------- the runtimes


def ort_runner(model: Any, threads: int) -> Callable[[np.ndarray], np.ndarray]:
    """``x -> y`` through an ONNX Runtime CPU session of ``model`` (a ModelProto) with ``threads`` intra-op
    threads (one inter-op thread, sequential execution)."""
    from gru_lib.export import ort_session

    session = ort_session(model.SerializeToString(), threads)
    return lambda x: session.run(None, {"x": x})[0]


def openvino_runner(model: Any, threads: int) -> Callable[[np.ndarray], np.ndarray]:
    """``x -> y`` through OpenVINO's CPU plugin compiling ``model`` (a ModelProto) in float32
    (``INFERENCE_PRECISION_HINT`` f32) with ``INFERENCE_NUM_THREADS`` = ``threads``, one stream."""
    import openvino as ov

    core = ov.Core()
    compiled = core.compile_model(core.read_model(model.SerializeToString(), b""), "CPU", {
        "INFERENCE_PRECISION_HINT": "f32", "INFERENCE_NUM_THREADS": threads, "NUM_STREAMS": 1,
        "PERFORMANCE_HINT": "LATENCY"})
    request = compiled.create_infer_request()

    def run(x: np.ndarray) -> np.ndarray:
        request.infer({0: x})
        return request.get_output_tensor(0).data

    return run


def openvino_layer_types(gru: nn.GRU) -> list[str]:
    """The layer types of OpenVINO's compiled model for ``gru``'s ONNX graph (f32), in execution order,
    constants and outputs left out: what the CPU plugin made of the ``GRU`` node."""
    import openvino as ov

    core = ov.Core()
    compiled = core.compile_model(core.read_model(onnx_gru_model(gru).SerializeToString(), b""), "CPU",
                                  {"INFERENCE_PRECISION_HINT": "f32"})
    types = [op.get_rt_info()["layerType"].astype(str) for op in compiled.get_runtime_model().get_ordered_ops()]
    return [t for t in types if t not in ("Const", "Output")]


_PACKAGES = {"onnxruntime": ("onnx", "onnxruntime"), "openvino": ("onnx", "openvino")}


def missing_peer_note(name: str) -> str | None:
    """None when peer ``name``'s packages are installed, else the one-line note saying what to install."""
    missing = [p for p in _PACKAGES.get(name, ()) if importlib.util.find_spec(p) is None]
    if not missing:
        return None
    return f"{name} skipped: {', '.join(missing)} not installed ({MAKE_TARGET} installs the peers)"


# ---------------------------------------------------------------------------------------------------- peers


@dataclass
class Peer:
    """One runtime computing ``gru``'s function on one bound input: ``forward()`` returns the output (T, B,
    dirs * H) as a tensor; ``train_step()`` runs forward + backward (None: inference only)."""

    name: str
    forward: Callable[[], Tensor]
    train_step: Callable[[], None] | None = None


def _torch_peer(name: str, module: nn.Module, x: Tensor) -> Peer:
    """A PyTorch module as a peer: forward under ``no_grad``; forward + backward of ``sum(y)`` with respect
    to the parameters and the input."""
    grad_x = x.detach().clone().requires_grad_()

    def forward() -> Tensor:
        with torch.no_grad():
            return module(x)[0]

    def train_step() -> None:
        module.zero_grad(set_to_none=True)
        grad_x.grad = None
        module(grad_x)[0].sum().backward()

    return Peer(name, forward, train_step)


def make_peer(name: str, gru: nn.GRU, x: Tensor, threads: int, order: Sequence[int] = ONNX_ORDER) -> Peer:
    """Peer ``name`` (one of :data:`PEERS`) holding ``gru``'s weights, bound to the input ``x``; ``order``
    maps the gates into the ONNX graph (the default is the right one; tests pass wrong ones)."""
    if name == "nn.GRU":
        return _torch_peer(name, gru, x)
    if name == "FastGRU":
        from gru_lib.fast import FastGRU

        fast = FastGRU(gru.input_size, gru.hidden_size, num_layers=gru.num_layers, bias=gru.bias,
                       batch_first=gru.batch_first, bidirectional=gru.bidirectional)
        fast.load_state_dict(gru.state_dict())
        return _torch_peer(name, fast, x)
    if name not in _PACKAGES:
        raise ValueError(f"unknown peer {name!r} (choose from {', '.join(PEERS)})")
    runner = (ort_runner if name == "onnxruntime" else openvino_runner)(onnx_gru_model(gru, order), threads)
    array = np.ascontiguousarray(x.detach().cpu().numpy(), dtype=np.float32)
    return Peer(name, lambda: torch.from_numpy(np.array(runner(array))))


def check_peers(peers: Sequence[Peer], reference: Tensor, tolerance: float = TOLERANCE
                ) -> tuple[dict[str, float], list[str]]:
    """The max absolute difference of each peer's forward output from ``reference`` and a note for each
    peer that fails (a difference above ``tolerance``, a wrong shape, or an error while running)."""
    diffs: dict[str, float] = {}
    notes: list[str] = []
    for peer in peers:
        try:
            out = peer.forward()
        except Exception as error:  # a runtime's own failure: report it, time the others
            notes.append(f"{peer.name} excluded: it failed to run ({type(error).__name__}: {error})"[:300])
            continue
        if tuple(out.shape) != tuple(reference.shape):
            notes.append(f"{peer.name} excluded: output shape {tuple(out.shape)}, nn.GRU's {tuple(reference.shape)}")
            continue
        diffs[peer.name] = float((out.float() - reference.float()).abs().max())
        if not diffs[peer.name] <= tolerance:
            notes.append(f"{peer.name} excluded: max |difference| from the reference "
                         f"{diffs[peer.name]:.3g} > {tolerance:g}")
    return diffs, notes


# ---------------------------------------------------------------------------------------------------- bench


def shape_bytes(shape: Shape, mode: str = "fwd") -> int:
    """A lower bound on the bytes benching ``shape`` in ``mode`` allocates at once: the input (T, B, D) and
    output (T, B, H) and the weights, each in float32 and again in float64 (the reference); forward + backward
    adds the gates kept for backward (T, B, 3H) and the input's gradient (T, B, D), in float32."""
    rows, d, h = shape.steps * shape.batch, shape.input_size, shape.hidden
    weights = 3 * h * (d + h) + 6 * h
    total = (4 + 8) * (rows * (d + h) + weights)
    if mode != "fwd":
        total += 4 * rows * (3 * h + d)
    return total


def available_memory() -> int | None:
    """The bytes this process can still allocate: /proc/meminfo's MemAvailable (else the physical memory),
    capped by a cgroup v2 ``memory.max`` when one is set; None where neither can be read."""
    found: list[int] = []
    try:
        with open("/proc/meminfo", encoding="ascii") as meminfo:
            found += [int(line.split()[1]) * 1024 for line in meminfo if line.startswith("MemAvailable:")]
    except (OSError, ValueError, IndexError):
        pass
    if not found:
        try:
            found.append(os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
        except (AttributeError, OSError, ValueError):
            pass
    try:
        limit = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        used = Path("/sys/fs/cgroup/memory.current").read_text().strip()
        if limit != "max":
            found.append(max(0, int(limit) - int(used)))
    except (OSError, ValueError):
        pass
    return min(found) if found else None


def memory_shortfall(shape: Shape, mode: str = "fwd") -> tuple[int, int] | None:
    """``(bytes needed, bytes available)`` when :func:`shape_bytes` of ``shape`` exceeds
    :func:`available_memory` (check before allocating anything), else None (it fits, or memory is unknown)."""
    available = available_memory()
    needed = shape_bytes(shape, mode)
    return (needed, available) if available is not None and needed > available else None


def _layer_and_input(shape: Shape) -> tuple[nn.GRU, Tensor]:
    """The bench's ``nn.GRU(D, H)`` (seed 0) and input (T, B, D) (seed 1) for ``shape``."""
    torch.manual_seed(0)
    gru = nn.GRU(shape.input_size, shape.hidden)
    x = torch.randn(shape.steps, shape.batch, shape.input_size, generator=torch.Generator().manual_seed(1))
    return gru, x


def _build_peers(names: Sequence[str], mode: str, gru: nn.GRU, x: Tensor, order: Sequence[int],
                 notes: list[str]) -> list[Peer]:
    """The peers of ``names`` that can run ``mode`` and are installed; a note for each one skipped."""
    peers = []
    for name in names:
        if mode != "fwd" and name in INFERENCE_ONLY:
            continue
        note = missing_peer_note(name)
        if note is None:
            try:
                peers.append(make_peer(name, gru, x, torch.get_num_threads(), order))
            except (ImportError, RuntimeError, OSError) as error:
                note = f"{name} skipped: {type(error).__name__}: {error}"[:300]
        if note is not None and note not in notes:
            notes.append(note)
    return peers


def bench_peer_shape(shape: Shape, mode: str, names: Sequence[str], repeats: int, notes: list[str],
                     order: Sequence[int] = ONNX_ORDER) -> list[dict[str, Any]]:
    """Check, then time (interleaved, ``repeats`` rounds) every peer of ``names`` on ``shape`` in ``mode``
    ("fwd" or "fwd+bwd"); one row per peer that passed the check, with its median and ratio to the fastest."""
    gru, x = _layer_and_input(shape)
    peers = _build_peers(names, mode, gru, x, order, notes)
    with torch.no_grad():  # float64: a reference no float32 peer's rounding (nn.GRU's included) can move
        reference = copy.deepcopy(gru).double()(x.double())[0]
    diffs, failed = check_peers(peers, reference)
    notes += [f"B={shape.batch} T={shape.steps} {mode}: {note}" for note in failed]
    kept = [p for p in peers if diffs.get(p.name, float("inf")) <= TOLERANCE]
    jobs = {p.name: (p.forward if mode == "fwd" else p.train_step) for p in kept}
    medians = {name: statistics.median(v) for name, v in time_interleaved(jobs, repeats).items()} if jobs else {}
    fastest = min(medians.values(), default=float("nan"))
    return [{"batch": shape.batch, "steps": shape.steps, "input_size": shape.input_size, "hidden": shape.hidden,
             "mode": mode, "peer": name, "median_ms": medians[name] * 1e3, "ratio_to_fastest": medians[name] / fastest,
             "max_abs_diff": diffs[name], "repeats": repeats, "threads": torch.get_num_threads()}
            for name in medians]


def bench_peers(forward: Sequence[Shape] = DEFAULT_FORWARD, backward: Sequence[Shape] = DEFAULT_BACKWARD,
                names: Sequence[str] = PEERS, repeats: int = 5, order: Sequence[int] = ONNX_ORDER
                ) -> tuple[list[dict[str, Any]], list[str]]:
    """Every peer on the ``forward`` shapes (forward) and the ``backward`` shapes (forward + backward):
    the rows of :func:`bench_peer_shape` and the notes (peers skipped or excluded)."""
    rows: list[dict[str, Any]] = []
    notes: list[str] = []
    for mode, shapes in (("fwd", forward), ("fwd+bwd", backward)):
        for shape in shapes:
            rows += bench_peer_shape(shape, mode, names, repeats, notes, order)
    if any(name in INFERENCE_ONLY for name in names) and backward:
        notes.append(f"{' and '.join(n for n in names if n in INFERENCE_ONLY)}: inference only (no fwd+bwd)")
    return rows, notes


def peer_versions() -> dict[str, str]:
    """The version of each installed runtime: torch, onnx, onnxruntime, openvino."""
    versions = {}
    for package in ("torch", "onnx", "onnxruntime", "openvino"):
        try:
            versions[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            pass
    return versions


def format_peer_table(rows: Sequence[dict[str, Any]]) -> str:
    """The rows as a fixed-width table: shape, mode, peer, median ms, ratio to the fastest, max |diff|."""
    lines = [f"{'B':>4} {'T':>5} {'D':>4} {'H':>4}  {'mode':<8} {'peer':<12} {'median ms':>10} {'x fastest':>9} "
             f"{'max|diff|':>9}"]
    for r in rows:
        lines.append(f"{r['batch']:>4} {r['steps']:>5} {r['input_size']:>4} {r['hidden']:>4}  {r['mode']:<8} "
                     f"{r['peer']:<12} {r['median_ms']:>10.3f} {r['ratio_to_fastest']:>9.2f} {r['max_abs_diff']:>9.1e}")
    return "\n".join(lines)
