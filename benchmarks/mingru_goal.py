"""The minGRU speed goal: forward + backward of MinGRU (parallel) against nn.GRU at B=16, T=4096, D=128, H=256.

Interleaved rounds (one warm-up call each first), medians, ratio measured in the same run. Usage:
    .venv/bin/python benchmarks/mingru_goal.py [--rounds 3] [--threads 2]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from torch import nn

from gru_lib import MinGRU


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    batch, steps, inputs, hidden = 16, 4096, 128, 256
    x = torch.randn(steps, batch, inputs)
    models = {"nn.GRU": nn.GRU(inputs, hidden), "MinGRU-parallel": MinGRU(inputs, hidden)}

    def run(model: nn.Module) -> None:
        out, _ = model(x)
        out.sum().backward()

    for model in models.values():
        run(model)
    times: dict[str, list[float]] = {name: [] for name in models}
    for _ in range(args.rounds):
        for name, model in models.items():
            start = time.perf_counter()
            run(model)
            times[name].append(time.perf_counter() - start)
    for name, values in times.items():
        print(f"{name}: median {statistics.median(values):.3f} s  ({', '.join(f'{v:.3f}' for v in values)})")
    ratio = statistics.median(times["nn.GRU"]) / statistics.median(times["MinGRU-parallel"])
    print(f"threads={args.threads}  speedup of MinGRU-parallel over nn.GRU (fwd+bwd, medians): {ratio:.2f}x")


if __name__ == "__main__":
    main()
