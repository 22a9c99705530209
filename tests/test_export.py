"""ONNX export of the classifier (gru_lib.export, `python -m gru_lib export`): ONNX Runtime gives PyTorch's
logits and predictions, padding included, for the shipped model on the whole test split and for bidirectional,
two-layer models of every GRU backend. Exports take seconds each, so each model is exported once per module."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from torch import nn

pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")
onnx = pytest.importorskip("onnx")

from gru_lib.cli import main  # noqa: E402
from gru_lib.export import (PaddedClassifier, check_onnx_classifier, export_classifier,  # noqa: E402
                            export_gru_layer, onnx_logits, ort_session)
from gru_lib.models import NewsClassifier  # noqa: E402
from gru_lib.shipped import load_shipped  # noqa: E402


def _random_ids(count: int, vocab: int, max_len: int, seed: int = 1) -> list[list[int]]:
    gen = torch.Generator().manual_seed(seed)
    lengths = torch.randint(1, max_len + 1, (count,), generator=gen)
    return [torch.randint(2, vocab, (int(n),), generator=gen).tolist() for n in lengths]


@pytest.fixture(scope="module")
def shipped_onnx(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, NewsClassifier, object, object]:
    model, vocab, config, _ = load_shipped()
    return export_classifier(model, tmp_path_factory.mktemp("onnx") / "shipped.onnx"), model, vocab, config


@pytest.fixture(scope="module")
def bidirectional(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, NewsClassifier]:
    """A two-layer bidirectional classifier with every pooling and the gru_lib backend (the shipped model
    has the torch backend), exported."""
    torch.manual_seed(0)
    model = NewsClassifier(60, embed_dim=6, hidden_size=5, num_layers=2, bidirectional=True, backend="gru_lib",
                           pooling="mean+max+last+emb").eval()
    return export_classifier(model, tmp_path_factory.mktemp("onnx") / "bidirectional.onnx"), model


def test_the_graph_has_gru_nodes_and_dynamic_batch_and_length(shipped_onnx) -> None:  # noqa: ANN001
    graph = onnx.load(str(shipped_onnx[0])).graph
    ops = {node.op_type for node in graph.node}
    assert "GRU" in ops and "Loop" not in ops  # the recurrence is ONNX's GRU, not an unrolled or looped scan
    dims = {i.name: [d.dim_param or d.dim_value for d in i.type.tensor_type.shape.dim] for i in graph.input}
    assert dims == {"ids": ["batch", "steps"], "lengths": ["batch"]}


@pytest.mark.slow
def test_shipped_model_predicts_the_same_on_the_whole_test_split(shipped_onnx) -> None:  # noqa: ANN001
    if not os.environ.get("GRU_LIB_DATA"):
        pytest.skip("GRU_LIB_DATA is not set (the AG News test split)")
    from gru_lib.data import load_ag_news
    from gru_lib.text import numericalize

    path, model, vocab, config = shipped_onnx
    rows = load_ag_news("test", os.environ["GRU_LIB_DATA"], download=False)
    ids = numericalize([f"{r.title} {r.description}" for r in rows], vocab, max_len=config.max_len,
                       clean=config.clean_text)
    check = check_onnx_classifier(path, model, ids, pad_index=vocab.pad_index)
    assert check["rows"] == len(rows) == 7_600
    assert check["same_predictions"] == 7_600
    assert check["max_abs_diff"] < 1e-4


def test_bidirectional_two_layers_match_pytorch(bidirectional) -> None:  # noqa: ANN001
    path, model = bidirectional
    ids = _random_ids(50, 60, 23)
    check = check_onnx_classifier(path, model, ids, batch_size=9)  # batches mix lengths: padding everywhere
    assert check["same_predictions"] == 50 and check["max_abs_diff"] < 1e-5


def test_padding_changes_no_logit(bidirectional) -> None:  # noqa: ANN001
    path, _ = bidirectional
    session = ort_session(path)
    ids = _random_ids(6, 60, 9, seed=3)
    alone = torch.cat([onnx_logits(session, [seq]) for seq in ids])
    together = onnx_logits(session, ids, batch_size=6)  # one batch padded to the longest
    assert torch.allclose(alone, together, atol=1e-6, rtol=0)
    # Different token ids in the padding cells: the same logits (the pad id reaches nothing).
    from gru_lib.text import collate_padded

    tokens, lengths, _ = collate_padded([(seq, 0) for seq in ids])
    noisy = tokens.masked_fill(torch.arange(tokens.shape[1])[None, :] >= lengths[:, None], 7)
    (logits,) = session.run(None, {"ids": noisy.numpy(), "lengths": lengths.numpy()})
    assert torch.allclose(torch.from_numpy(logits), together, atol=1e-6, rtol=0)


def test_padded_classifier_is_the_packed_one_in_pytorch() -> None:
    """The exported function itself (no ONNX): the same logits as the classifier's packed forward."""
    torch.manual_seed(0)
    model = NewsClassifier(40, embed_dim=4, hidden_size=3, num_layers=2, bidirectional=True).eval()
    from gru_lib.text import collate_padded

    tokens, lengths, _ = collate_padded([(seq, 0) for seq in _random_ids(8, 40, 11)])
    with torch.no_grad():
        assert torch.allclose(PaddedClassifier(model)(tokens, lengths), model(tokens, lengths), atol=1e-6, rtol=0)


def test_a_backend_without_gru_weights_is_refused() -> None:
    from gru_lib.errors import GruLibError

    with pytest.raises(GruLibError, match="'mingru' backend cannot be exported"):
        PaddedClassifier(NewsClassifier(20, embed_dim=4, hidden_size=3, backend="mingru"))


@pytest.mark.parametrize("batch_first", [False, True])
@pytest.mark.parametrize("layer_class", ["gru_lib.GRU", "FastGRU"])
def test_a_bare_gru_layer_exports(layer_class: str, batch_first: bool, tmp_path: Path) -> None:
    """gru_lib's GRU layers are nn.GRU subclasses that export as ONNX GRU nodes with their own weights."""
    from gru_lib.fast import FastGRU
    from gru_lib.layer import GRU

    cls = GRU if layer_class == "gru_lib.GRU" else FastGRU
    if not issubclass(cls, nn.GRU):
        pytest.skip(f"{layer_class} is not an nn.GRU subclass in this version")
    torch.manual_seed(0)
    layer = cls(4, 6, num_layers=2, bidirectional=True, batch_first=batch_first).eval()
    path = export_gru_layer(layer, tmp_path / "layer.onnx")
    assert "GRU" in {node.op_type for node in onnx.load(str(path)).graph.node}
    x = torch.randn(2, 9, 4) if batch_first else torch.randn(9, 2, 4)  # other B and T than the example's
    (y,) = ort_session(path).run(None, {"x": x.numpy()})
    with torch.no_grad():
        assert torch.allclose(torch.from_numpy(y), layer(x)[0], atol=1e-5, rtol=0)


# ------------------------------------------------------------------------------------------- the command line


def test_export_command_writes_checks_and_refuses_to_overwrite(tmp_path: Path,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "model.onnx"
    assert main(["export", "--out", str(out), "--check-rows", "40"]) == 0
    printed = capsys.readouterr().out
    assert f"wrote {out}" in printed and "on 40 random texts" in printed and "same prediction on 40" in printed
    assert "GRU" in {node.op_type for node in onnx.load(str(out)).graph.node}
    before = out.read_bytes()
    assert main(["export", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err == f"error: --out {out}: exists (pass --force to overwrite it)\n"
    assert out.read_bytes() == before and [p.name for p in tmp_path.iterdir()] == ["model.onnx"]


def test_export_command_takes_a_run_directory_or_its_checkpoint(tmp_path: Path,
                                                                capsys: pytest.CaptureFixture[str]) -> None:
    from gru_lib.checkpoint import save_checkpoint
    from gru_lib.cli import _load_any_classifier

    _, vocab, config, _ = load_shipped()
    torch.manual_seed(0)
    model = NewsClassifier(len(vocab), embed_dim=4, hidden_size=3, bidirectional=True).eval()
    save_checkpoint({"model": model.state_dict(), "model_config": model.config(), "vocab": vocab.to_dict(),
                     "train_config": config.to_dict()}, tmp_path / "checkpoint.pt")
    loaded = _load_any_classifier(str(tmp_path))[0]  # the directory and the file give the same model
    assert all(torch.equal(v, loaded.state_dict()[k]) for k, v in model.state_dict().items())
    out = tmp_path / "run.onnx"
    argv = ["export", "--checkpoint", str(tmp_path / "checkpoint.pt"), "--out", str(out), "--check-rows", "30"]
    if os.environ.get("GRU_LIB_DATA"):
        argv += ["--data", os.environ["GRU_LIB_DATA"]]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert f"wrote {out}" in printed and "same prediction on 30" in printed
    assert ("on 30 test rows" if "--data" in argv else "on 30 random texts") in printed


@pytest.mark.parametrize("argv,words", [
    (["export", "--out", "DIR"], ["--out", "is a directory"]),
    (["export", "--out", "DIR/missing/m.onnx"], ["--out", "does not exist"]),
    (["export", "--out", "DIR/junk.bin/m.onnx"], ["--out", "junk.bin is not a directory"]),
    (["export", "--out", "DIR/junk.bin/sub/m.onnx"], ["--out", "junk.bin is not a directory"]),
    (["export", "--out", "DIR/m.onnx", "--checkpoint", "DIR/nope"], ["--checkpoint", "no such file"]),
    (["export", "--out", "DIR/m.onnx", "--checkpoint", "DIR/junk.bin"], ["junk.bin"]),
    (["export", "--out", "DIR/m.onnx", "--check-rows", "0"], ["--check-rows", "must be >= 1"]),
    (["export"], ["--out", "required"]),
])
def test_export_misuse_is_one_line(argv: list[str], words: list[str], tmp_path: Path,
                                   capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "junk.bin").write_bytes(b"not a model at all")
    argv = [a.replace("DIR", str(tmp_path)) for a in argv]
    try:
        status = main(argv)
    except SystemExit as stop:
        status = stop.code
    err = capsys.readouterr().err
    assert status == 2 and len(err.strip().splitlines()) == 1 and err.startswith("error: "), err
    assert all(word in err for word in words), err
    assert not (tmp_path / "m.onnx").exists()


# ------------------------------------------------------------------------- no data loss: interrupts, inputs

ROOT = Path(__file__).resolve().parents[1]


def _tiny_checkpoint(run_dir: Path) -> Path:
    from gru_lib.checkpoint import save_checkpoint

    _, vocab, config, _ = load_shipped()
    torch.manual_seed(0)
    model = NewsClassifier(len(vocab), embed_dim=4, hidden_size=3).eval()
    run_dir.mkdir(parents=True, exist_ok=True)
    save_checkpoint({"model": model.state_dict(), "model_config": model.config(), "vocab": vocab.to_dict(),
                     "train_config": config.to_dict()}, run_dir / "checkpoint.pt")
    return run_dir / "checkpoint.pt"


def test_ctrl_c_while_exporting_leaves_the_old_file_and_the_users_files(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    import gru_lib.export

    out, users = tmp_path / "a.onnx", tmp_path / ".a.onnx.tmp"  # the user's file has the old temporary name
    out.write_bytes(b"the previous export")
    users.write_bytes(b"the user's own file")

    def torn_export(model: NewsClassifier, path: str | Path, **_: object) -> Path:
        Path(path).write_bytes(b"half an ONNX file")
        raise KeyboardInterrupt

    monkeypatch.setattr(gru_lib.export, "export_classifier", torn_export)
    assert main(["export", "--out", str(out), "--force", "--check-rows", "5"]) == 130
    assert capsys.readouterr().err == "error: interrupted\n"
    assert out.read_bytes() == b"the previous export" and users.read_bytes() == b"the user's own file"
    assert sorted(p.name for p in tmp_path.iterdir()) == [".a.onnx.tmp", "a.onnx"]


@pytest.mark.slow
@pytest.mark.subprocess
def test_sigterm_while_exporting_leaves_no_file_and_no_temporary_file(tmp_path: Path) -> None:
    """The real command line, sent SIGTERM once its temporary file exists (the exporter runs for seconds)."""
    users = tmp_path / ".a.onnx.tmp"
    users.write_bytes(b"the user's own file")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen([sys.executable, "-m", "gru_lib", "export", "--out", "a.onnx", "--check-rows", "5"],
                               cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not [p for p in tmp_path.iterdir() if p.name.startswith(".a.onnx.") and p != users]:
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            pytest.fail(f"export ended (status {process.returncode}) before it began writing: {process.stderr.read()}")
        time.sleep(0.01)
    process.send_signal(signal.SIGTERM)
    _, err = process.communicate(timeout=120)
    assert process.returncode == 128 + signal.SIGTERM, err
    assert err == "error: stopped by SIGTERM\n"
    assert [p.name for p in tmp_path.iterdir()] == [".a.onnx.tmp"] and users.read_bytes() == b"the user's own file"


@pytest.mark.parametrize("out", ["CKPT", "RUN/./checkpoint.pt", "LINK", "RUN/../run/checkpoint.pt"])
@pytest.mark.parametrize("given", ["file", "directory"])
def test_export_never_overwrites_its_checkpoint(out: str, given: str, tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str],
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    import gru_lib.export

    checkpoint = _tiny_checkpoint(tmp_path / "run")
    before = checkpoint.read_bytes()
    (tmp_path / "link.pt").symlink_to(checkpoint)
    out = (out.replace("CKPT", str(checkpoint)).replace("LINK", str(tmp_path / "link.pt"))
           .replace("RUN", str(tmp_path / "run")))
    monkeypatch.setattr(gru_lib.export, "export_classifier", lambda *a, **k: pytest.fail("export started"))
    source = str(checkpoint if given == "file" else checkpoint.parent)
    assert main(["export", "--checkpoint", source, "--out", out, "--force"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: --out {out}: is ") and "which export reads" in err and err.count("\n") == 1, err
    assert checkpoint.read_bytes() == before and (tmp_path / "link.pt").is_symlink()


def test_export_never_overwrites_the_shipped_model_or_its_data(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    import gru_lib.export
    from gru_lib.shipped import DEFAULT_MODEL

    from synthetic_news import write_ag_news

    data = write_ag_news(tmp_path / "data", 8, 8)
    test_csv = data / "ag_news" / "test.csv"
    before = DEFAULT_MODEL.read_bytes(), test_csv.read_bytes()
    monkeypatch.setattr(gru_lib.export, "export_classifier", lambda *a, **k: pytest.fail("export started"))
    assert main(["export", "--out", str(DEFAULT_MODEL), "--force"]) == 2  # the default --checkpoint
    assert "which export reads" in capsys.readouterr().err
    assert main(["export", "--data", str(data), "--out", str(test_csv), "--force"]) == 2
    assert "which export reads" in capsys.readouterr().err
    assert (DEFAULT_MODEL.read_bytes(), test_csv.read_bytes()) == before
