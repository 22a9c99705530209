"""gru_lib.evaluate: logits come back in the caller's order whatever the length bucketing does, the model's mode
is restored, and evaluation sharded over ranks (each rank its rows ``rank::world_size``, counts summed) equals
the unsharded evaluation exactly."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from gru_lib.distributed import DistContext
from gru_lib.evaluate import evaluate_model, predict_logits
from gru_lib.models import NewsClassifier
from gru_lib.text import EncodedDataset


def _model() -> NewsClassifier:
    torch.manual_seed(0)
    return NewsClassifier(30, embed_dim=6, hidden_size=5, dropout=0.3, word_dropout=0.2)


def _ids(n: int) -> list[list[int]]:
    g = torch.Generator().manual_seed(1)
    return [torch.randint(2, 30, (int(torch.randint(1, 12, (1,), generator=g)),), generator=g).tolist()
            for _ in range(n)]


def test_predict_logits_returns_the_callers_order_and_restores_the_mode() -> None:
    model, ids = _model(), _ids(23)
    model.train()
    logits = predict_logits(model, ids, batch_size=4)
    assert model.training
    model.eval()
    with torch.no_grad():
        one_by_one = torch.cat([model(torch.tensor([row]), torch.tensor([len(row)])) for row in ids])
    torch.testing.assert_close(logits, one_by_one, atol=1e-5, rtol=1e-5)
    assert predict_logits(model, []).shape == (0, 4)


@dataclass(frozen=True)
class _OneRank(DistContext):
    """A rank of a job whose all-reduce the test performs itself (it sums what each rank returns)."""

    def all_reduce_sum(self, tensor: Tensor) -> Tensor:
        return tensor


def test_sharded_evaluation_equals_unsharded() -> None:
    model, ids = _model(), _ids(23)
    labels = [i % 4 for i in range(len(ids))]
    dataset = EncodedDataset(ids, labels)
    cm, loss = evaluate_model(model, dataset, batch_size=5)
    assert int(cm.sum()) == len(ids)
    for world_size in (2, 3):
        parts = [evaluate_model(model, dataset, batch_size=5, ctx=_OneRank(rank=r, world_size=world_size))
                 for r in range(world_size)]
        assert torch.equal(sum(part_cm for part_cm, _ in parts), cm)
        total_loss = sum(part_loss * int(part_cm.sum()) for part_cm, part_loss in parts)
        assert abs(total_loss / len(ids) - loss) < 1e-6
