"""Data parallelism: two gloo processes on 127.0.0.1 take one DDP step; it must equal one single-process step
on the concatenated batch. Also: metrics all-reduce, the Join safety net for uneven batch counts, the bucket
sizes we report, and the single-process fallback used by plain ``python``."""

from __future__ import annotations

import os
import socket
import time
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
from torch import nn
from torch.nn import functional as F

from gru_lib.distributed import (
    DistContext,
    cleanup,
    gradient_buckets,
    init_distributed,
    join_context,
    unwrap_model,
    wrap_model,
)
from gru_lib.errors import GruLibError

WORLD = 2
PER_RANK = 3  # examples per rank; the global batch is WORLD * PER_RANK
SEQ_LEN, VOCAB, CLASSES = 7, 50, 4


class TinyGRUClassifier(nn.Module):
    """Embedding -> GRU -> last state -> linear: the shape of the book's classifier, small."""

    def __init__(self) -> None:
        super().__init__()
        self.embedding = nn.Embedding(VOCAB, 8)
        self.gru = nn.GRU(8, 12, batch_first=True)
        self.head = nn.Linear(12, CLASSES)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        _, h = self.gru(self.embedding(tokens))
        return self.head(h[-1])


def _global_batch() -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(123)
    tokens = torch.randint(0, VOCAB, (WORLD * PER_RANK, SEQ_LEN), generator=gen)
    labels = torch.randint(0, CLASSES, (WORLD * PER_RANK,), generator=gen)
    return tokens, labels


def _fresh_model_and_optimizer() -> tuple[nn.Module, torch.optim.Optimizer]:
    torch.manual_seed(0)
    model = TinyGRUClassifier()
    # SGD, not Adam: Adam's first step is sign(g), which flips on near-zero gradients whose last bits depend
    # on the order of summation, so it cannot be compared within a tolerance.
    return model, torch.optim.SGD(model.parameters(), lr=0.5, momentum=0.9, weight_decay=0.01)


def _worker(rank: int, port: int, out_dir: str) -> None:
    torch.set_num_threads(1)
    os.environ.update(
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(WORLD),
        LOCAL_RANK=str(rank),
    )
    ctx = init_distributed(device="cpu", timeout_s=60)
    assert (ctx.rank, ctx.world_size, ctx.is_main) == (rank, WORLD, rank == 0)
    model, optimizer = _fresh_model_and_optimizer()
    if rank == 1:  # DDP must broadcast rank 0's initial weights: start rank 1 elsewhere
        with torch.no_grad():
            for p in model.parameters():
                p.add_(1.0)
    ddp = wrap_model(model, ctx)
    tokens, labels = _global_batch()
    shard = slice(rank * PER_RANK, (rank + 1) * PER_RANK)
    loss = F.cross_entropy(ddp(tokens[shard]), labels[shard])
    loss.backward()
    optimizer.step()
    result = {"state": {k: v.clone() for k, v in unwrap_model(ddp).state_dict().items()}}

    # Metrics: each rank counts its shard; the sums are the global counts on every rank.
    with torch.no_grad():
        correct = (ddp(tokens[shard]).argmax(1) == labels[shard]).sum()
    counts = ctx.all_reduce_sum(torch.stack([correct, torch.tensor(PER_RANK)]).double())
    result["counts"] = counts

    # DDP rebuilds its buckets before the second step and logs them after the third; compare.
    for _ in range(2):
        optimizer.zero_grad()
        F.cross_entropy(ddp(tokens[shard]), labels[shard]).backward()
        optimizer.step()
    data = ddp._get_ddp_logging_data()
    result["ddp_buckets"] = [int(s) for s in str(data["rebuilt_bucket_sizes"]).split(",")]
    result["our_buckets"] = gradient_buckets(unwrap_model(ddp))

    # Uneven batch counts: rank 1 has one batch more. Join shadows its all-reduce; without it, a deadlock.
    with join_context(ddp, ctx):
        for _ in range(2 + rank):
            optimizer.zero_grad()
            F.cross_entropy(ddp(tokens[shard]), labels[shard]).backward()
            optimizer.step()
    ctx.barrier()
    result["after_join"] = {k: v.clone() for k, v in unwrap_model(ddp).state_dict().items()}
    torch.save(result, Path(out_dir) / f"rank{rank}.pt")
    cleanup(ctx)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def ddp_results(tmp_path_factory: pytest.TempPathFactory) -> list[dict]:
    out_dir = tmp_path_factory.mktemp("ddp")
    context = mp.start_processes(
        _worker, args=(_free_port(), str(out_dir)), nprocs=WORLD, join=False, start_method="spawn"
    )
    deadline = time.monotonic() + 90
    try:
        while not context.join(timeout=1):
            if time.monotonic() > deadline:
                pytest.fail("the two DDP processes did not finish within 90 s (deadlock?)")
    finally:
        for process in context.processes:
            if process.is_alive():
                process.kill()
    return [torch.load(out_dir / f"rank{r}.pt") for r in range(WORLD)]


@pytest.mark.subprocess
def test_ddp_step_equals_single_process_step_on_concatenated_batch(ddp_results: list[dict]) -> None:
    model, optimizer = _fresh_model_and_optimizer()
    tokens, labels = _global_batch()
    F.cross_entropy(model(tokens), labels).backward()
    optimizer.step()
    expected = model.state_dict()
    # The step must move the weights, or equality would say nothing.
    untouched, _ = _fresh_model_and_optimizer()
    assert not torch.allclose(expected["head.weight"], untouched.state_dict()["head.weight"])
    for result in ddp_results:
        assert result["state"].keys() == expected.keys()
        for name, value in expected.items():
            torch.testing.assert_close(result["state"][name], value, rtol=1e-5, atol=1e-6, msg=name)


@pytest.mark.subprocess
def test_metrics_all_reduce_to_global_counts(ddp_results: list[dict]) -> None:
    # Recompute the global count single-process from the state after the one step.
    model, _ = _fresh_model_and_optimizer()
    model.load_state_dict(ddp_results[0]["state"])
    tokens, labels = _global_batch()
    with torch.no_grad():
        correct = (model(tokens).argmax(1) == labels).sum().item()
    for result in ddp_results:
        assert result["counts"].tolist() == [correct, WORLD * PER_RANK]


@pytest.mark.subprocess
def test_uneven_batch_counts_finish_under_join_with_identical_replicas(ddp_results: list[dict]) -> None:
    # Reaching here means no deadlock; the replicas must still agree (gradients were all-reduced).
    for name, value in ddp_results[0]["after_join"].items():
        torch.testing.assert_close(ddp_results[1]["after_join"][name], value, msg=name)


@pytest.mark.subprocess
def test_gradient_buckets_match_ddp(ddp_results: list[dict]) -> None:
    for result in ddp_results:
        assert result["our_buckets"] == result["ddp_buckets"]
    total = sum(p.numel() * p.element_size() for p in TinyGRUClassifier().parameters())
    assert sum(ddp_results[0]["our_buckets"]) == total


def test_gradient_buckets_split_at_first_and_later_caps() -> None:
    model = nn.Sequential(nn.Linear(512, 512), nn.Linear(512, 1024))  # ~1 MiB and ~2 MiB of float32
    sizes = gradient_buckets(model, bucket_cap_mb=1.5)
    # Reverse order: the last layer (2 MiB + bias) fills the first (1 MiB cap) bucket alone.
    assert sizes == [(512 * 1024 + 1024) * 4, (512 * 512 + 512) * 4]


def test_single_process_context_without_torchrun(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    ctx = init_distributed(device="cpu")
    assert ctx == DistContext()
    assert ctx.is_main and not ctx.is_distributed
    tensor = torch.tensor([1.5, 2.0])
    assert ctx.all_reduce_sum(tensor) is tensor
    assert tensor.tolist() == [1.5, 2.0]
    ctx.barrier()
    model = nn.Linear(2, 2)
    assert wrap_model(model, ctx) is model and unwrap_model(model) is model
    with join_context(model, ctx):
        pass
    cleanup(ctx)


def test_incomplete_or_bad_torchrun_environment_is_a_user_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RANK", "0")
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    with pytest.raises(GruLibError, match="WORLD_SIZE, LOCAL_RANK not set"):
        init_distributed(device="cpu")
    monkeypatch.setenv("WORLD_SIZE", "two")
    monkeypatch.setenv("LOCAL_RANK", "0")
    with pytest.raises(GruLibError, match="WORLD_SIZE='two'"):
        init_distributed(device="cpu")
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "2")
    with pytest.raises(GruLibError, match="RANK=2 is outside"):
        init_distributed(device="cpu")


def test_world_size_one_under_torchrun_needs_no_process_group(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "1")
    monkeypatch.setenv("LOCAL_RANK", "0")
    ctx = init_distributed(device="cpu")
    assert ctx.world_size == 1 and not torch.distributed.is_initialized()


def test_cuda_request_without_cuda_is_a_user_error(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(GruLibError, match="CUDA is not available"):
        init_distributed(device="cuda")


@pytest.mark.parametrize("n_examples", [37, 40, 41, 3])
@pytest.mark.parametrize("drop_last", [False, True])
def test_sharded_bucket_sampler_gives_every_rank_the_same_number_of_batches(n_examples: int, drop_last: bool) -> None:
    from gru_lib.text import BucketBatchSampler

    lengths = [(7 * i) % 13 + 1 for i in range(n_examples)]
    shares = []
    for rank in range(WORLD):
        sampler = BucketBatchSampler(lengths, 4, shuffle=True, seed=5, drop_last=drop_last,
                                     num_replicas=WORLD, rank=rank)
        sampler.set_epoch(1)
        shares.append(list(sampler))
        assert len(shares[-1]) == len(sampler)
    # Equal counts: every rank enters the same number of gradient all-reduces, so none waits forever.
    assert len({len(share) for share in shares}) == 1
    seen = {i for share in shares for batch in share for i in batch}
    if drop_last:
        assert len(seen) >= 4 * WORLD * len(shares[0])
    else:
        assert seen == set(range(n_examples))
