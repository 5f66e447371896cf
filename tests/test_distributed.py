"""DistributedDataParallel over a compiled module: 2 CPU processes, gloo.

Each process trains on its half of the global batch with interpreter kernels;
afterwards the weights must equal a single-process eager run on the whole batch.
"""
import os
import tempfile

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from examples_models import BinaryClassifier

pytestmark = pytest.mark.cpu_only  # gloo processes on CPU

STEPS, BATCH = 3, 16


def _data():
    g = torch.Generator().manual_seed(1)
    return torch.randn(BATCH, 10, generator=g), (torch.rand(BATCH, 1, generator=g) > 0.5).float()


def _worker(rank, world, init_file, out_file):
    os.environ["TRITON_INTERPRET"] = "1"
    from torch.nn.parallel import DistributedDataParallel as DDP

    import fusion
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    torch.manual_seed(0)
    model = DDP(fusion.compile(BinaryClassifier()))
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    x, y = _data()
    shard = slice(rank * BATCH // world, (rank + 1) * BATCH // world)
    for _ in range(STEPS):
        opt.zero_grad()
        torch.nn.functional.binary_cross_entropy(model(x[shard]), y[shard]).backward()
        opt.step()
    if rank == 0:
        torch.save({k: v.detach().clone() for k, v in model.module.state_dict().items()}, out_file)
    dist.destroy_process_group()


def test_ddp_two_processes_match_single_process_eager():
    with tempfile.TemporaryDirectory() as tmp:
        out_file = os.path.join(tmp, "weights.pt")
        mp.spawn(_worker, args=(2, os.path.join(tmp, "init"), out_file), nprocs=2, join=True)
        ddp_weights = torch.load(out_file)
    torch.manual_seed(0)
    eager = BinaryClassifier()
    opt = torch.optim.SGD(eager.parameters(), lr=0.5)
    x, y = _data()
    for _ in range(STEPS):
        opt.zero_grad()
        torch.nn.functional.binary_cross_entropy(eager(x), y).backward()
        opt.step()
    assert list(ddp_weights) == list(eager.state_dict())
    for name, value in eager.state_dict().items():
        torch.testing.assert_close(ddp_weights[name], value, rtol=1e-5, atol=1e-6, msg=name)
