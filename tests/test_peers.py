"""`python -m gru_lib bench --peers` (gru_lib.peers): the weight mapping into ONNX's GRU computes nn.GRU's
function in ONNX Runtime and OpenVINO, the equivalence check rejects a wrong mapping, a missing runtime is
skipped with a note, and misuse is a one-line error. Tiny shapes only: no timing is asserted."""

from __future__ import annotations

import importlib.util
import json

import pytest
import torch
from torch import nn

from gru_lib import isa, peers
from gru_lib.bench import Shape
from gru_lib.cli import main
from gru_lib.peers import (bench_peer_shape, bench_peers, check_peers, make_peer, missing_peer_note, onnx_gru_tensors,
                           reorder_gates)

TINY = Shape(2, 5, 3, 4)
RUNTIMES = ["onnxruntime", pytest.param("openvino", marks=pytest.mark.skipif(
    importlib.util.find_spec("openvino") is None, reason="openvino is not installed (make peers)"))]


def test_reorder_gates_takes_r_z_n_to_z_r_n() -> None:
    r, z, n = torch.full((2, 3), 1.0), torch.full((2, 3), 2.0), torch.full((2, 3), 3.0)
    assert torch.equal(reorder_gates(torch.cat([r, z, n])), torch.cat([z, r, n]))
    assert torch.equal(reorder_gates(torch.tensor([1.0, 2.0, 3.0])), torch.tensor([2.0, 1.0, 3.0]))


def test_onnx_tensors_hold_both_directions_and_both_biases() -> None:
    torch.manual_seed(0)
    gru = nn.GRU(3, 4, bidirectional=True)
    tensors = onnx_gru_tensors(gru, 0)
    assert {k: v.shape for k, v in tensors.items()} == {"W": (2, 12, 3), "R": (2, 12, 4), "B": (2, 24)}
    b_ih, b_hh = gru.bias_ih_l0_reverse.detach(), gru.bias_hh_l0_reverse.detach()
    assert torch.equal(torch.from_numpy(tensors["B"][1]), torch.cat([reorder_gates(b_ih), reorder_gates(b_hh)]))
    assert torch.equal(torch.from_numpy(tensors["R"][0][:4]), gru.weight_hh_l0.detach()[4:8])  # ONNX's z: PyTorch's 2nd


@pytest.mark.parametrize("runtime", RUNTIMES)
@pytest.mark.parametrize("bidirectional,layers,batch_first", [(False, 1, False), (True, 1, False), (True, 2, True)])
def test_mapped_weights_compute_nn_gru(runtime: str, bidirectional: bool, layers: int, batch_first: bool) -> None:
    pytest.importorskip("onnx")
    pytest.importorskip(runtime)
    torch.manual_seed(0)
    gru = nn.GRU(3, 4, num_layers=layers, bidirectional=bidirectional, batch_first=batch_first)
    x = torch.randn(2, 7, 3)
    with torch.no_grad():
        expected = gru(x)[0]
    out = make_peer(runtime, gru, x, threads=1).forward()
    assert out.shape == expected.shape
    assert (out - expected).abs().max() < 1e-5


@pytest.mark.parametrize("order", [(0, 1, 2), (1, 2, 0)])
def test_the_equivalence_check_rejects_a_wrong_mapping(order: tuple[int, int, int]) -> None:
    pytest.importorskip("onnxruntime")
    torch.manual_seed(0)
    gru, x = nn.GRU(3, 4), torch.randn(5, 2, 3)
    with torch.no_grad():
        reference = gru(x)[0]
    right, wrong = make_peer("onnxruntime", gru, x, 1), make_peer("onnxruntime", gru, x, 1, order=order)
    wrong.name = "onnxruntime-wrong"
    diffs, notes = check_peers([right, wrong], reference)
    assert diffs["onnxruntime"] < 1e-5 < diffs["onnxruntime-wrong"]
    assert len(notes) == 1 and notes[0].startswith("onnxruntime-wrong excluded: max |difference| from the reference")
    # Through the bench: the wrongly mapped peer is reported and not timed; nn.GRU is.
    found: list[str] = []
    rows = bench_peer_shape(TINY, "fwd", ["nn.GRU", "onnxruntime"], 1, found, order=order)
    assert [row["peer"] for row in rows] == ["nn.GRU"] and "onnxruntime excluded" in found[0]


def test_a_peer_that_fails_to_run_is_reported() -> None:
    broken = peers.Peer("broken", lambda: (_ for _ in ()).throw(RuntimeError("no kernel")))
    diffs, notes = check_peers([broken], torch.zeros(1))
    assert diffs == {} and notes == ["broken excluded: it failed to run (RuntimeError: no kernel)"]


def test_the_bench_rows() -> None:
    pytest.importorskip("onnxruntime")
    rows, notes = bench_peers([TINY], [TINY], ["nn.GRU", "onnxruntime"], repeats=2)
    assert [(r["mode"], r["peer"]) for r in rows] == [("fwd", "nn.GRU"), ("fwd", "onnxruntime"), ("fwd+bwd", "nn.GRU")]
    for mode in ("fwd", "fwd+bwd"):
        ratios = [r["ratio_to_fastest"] for r in rows if r["mode"] == mode]
        assert min(ratios) == 1.0 and all(r >= 1.0 for r in ratios)
    assert all(r["max_abs_diff"] <= peers.TOLERANCE and r["threads"] == torch.get_num_threads() for r in rows)
    assert notes == ["onnxruntime: inference only (no fwd+bwd)"]


def test_a_missing_peer_is_skipped_with_a_note(monkeypatch: pytest.MonkeyPatch) -> None:
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "openvino" else real(name, *a))
    note = missing_peer_note("openvino")
    assert note == "openvino skipped: openvino not installed (make peers installs the peers)"
    assert missing_peer_note("nn.GRU") is None
    rows, notes = bench_peers([TINY], [], ["nn.GRU", "openvino"], repeats=1)
    assert [r["peer"] for r in rows] == ["nn.GRU"] and notes == [note]


# ------------------------------------------------------------------------------------------- the command line


def test_bench_peers_prints_json(capsys: pytest.CaptureFixture[str], restore_threads: None) -> None:
    pytest.importorskip("onnxruntime")
    argv = ["bench", "--peers", "--shape", "2,5,3,4", "--repeats", "1", "--threads", "1", "--json",
            "--backends", "onnxruntime"]
    assert main(argv) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["threads"] == 1 and "onnxruntime" in result["versions"] and result["machine"] == isa.describe()
    assert {(r["mode"], r["peer"]) for r in result["rows"]} == {("fwd", "nn.GRU"), ("fwd", "onnxruntime"),
                                                                ("fwd+bwd", "nn.GRU")}


def test_bench_peers_prints_a_table(capsys: pytest.CaptureFixture[str], restore_threads: None) -> None:
    assert main(["bench", "--peers", "--shape", "2,5,3,4", "--repeats", "1", "--threads", "1", "--backends",
                 "FastGRU"]) == 0  # nn.GRU, the reference, always joins
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == isa.describe()  # the processor and the kernel path, before the table
    assert lines[1].startswith("threads=1 torch=") and "median ms" in lines[3]
    assert [line.split()[4:6] for line in lines[4:8]] == [["fwd", "nn.GRU"], ["fwd", "FastGRU"],
                                                          ["fwd+bwd", "nn.GRU"], ["fwd+bwd", "FastGRU"]]


@pytest.mark.parametrize("argv,words", [
    (["--peers", "--full"], ["--peers", "--full does not apply"]),
    (["--peers", "--memory", "all", "--out", "x"], ["--memory, --out do not apply"]),
    (["--peers", "--backends", "tensorflow"], ["--backends tensorflow", "not a peer"]),
    (["--peers", "--shape", "1,2,3"], ["--shape 1,2,3", "B,T,D,H"]),
    (["--peers", "--shape", "1,x"], ["--shape", "comma-separated integers"]),
    (["--peers", "--repeats", "0"], ["--repeats", "must be >= 1"]),
    (["--json"], ["--json", "only with --peers"]),
])
def test_bench_peers_misuse_is_one_line(argv: list[str], words: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    try:
        status = main(["bench", *argv])
    except SystemExit as stop:
        status = stop.code
    err = capsys.readouterr().err
    assert status == 2 and len(err.strip().splitlines()) == 1 and err.startswith("error: "), err
    assert all(word in err for word in words), err


def test_openvino_compiles_the_gru_node_into_one_sequence_layer() -> None:
    pytest.importorskip("openvino")
    from gru_lib.peers import openvino_layer_types

    torch.manual_seed(0)
    types = openvino_layer_types(nn.GRU(3, 4))
    assert types.count("RNNSeq") == 1 and "Const" not in types
