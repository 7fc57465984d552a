"""A training loop of your own, run by `gpubroker submit examples/user-train.yaml`.

Ray Train calls ``train_fn`` once per node (one worker each) with torch.distributed set
up; a real loop would build its model and data here. This one fits a line with DDP and
reports one checkpoint, so a preempted run resumes where it was.
"""

import json
import os
import tempfile

import torch
import torch.distributed as dist
from ray import train


def train_fn(config=None):
    rank = train.get_context().get_world_rank()
    torch.manual_seed(0)
    model = torch.nn.parallel.DistributedDataParallel(torch.nn.Linear(1, 1))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    x = torch.linspace(-1, 1, 64).unsqueeze(1)
    y = 3 * x + 1
    steps = 100
    for _ in range(steps):
        loss = torch.nn.functional.mse_loss(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    folder = tempfile.mkdtemp()
    with open(os.path.join(folder, "meta.json"), "w") as handle:
        json.dump({"step": steps, "loss": loss.item()}, handle)
    checkpoint = train.Checkpoint.from_directory(folder) if rank == 0 else None
    train.report({"step": steps, "loss": loss.item()}, checkpoint=checkpoint)
    if rank == 0:
        print(f"rank {rank} of {dist.get_world_size()}: loss {loss.item():.4f}", flush=True)
