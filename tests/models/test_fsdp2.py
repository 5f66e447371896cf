"""FSDP2 (``torch.distributed.fsdp.fully_shard``) with compiled models: 2 CPU processes on
gloo, modelled on tests/test_distributed.py (DDP).

Each process trains on its half of the global batch, 3 AdamW steps, with the model's
blocks and then the root ``fully_shard``ed, in the patterns users write:

* ``torch.compile(model, backend="fusion")`` on the sharded model;
* ``fusion.compile(model)`` after sharding;
* sharding after ``fusion.compile(model)`` (the compiled module's blocks and itself);
* sharding after ``fusion.compile`` of each block (torchtitan's per-block pattern).

The parameters afterwards must equal eager FSDP2's (the same processes, data and steps;
a float64 run of it gives the precision budget), with FSDP's hooks still running: each
block's forward sees its parameters all-gathered (FSDP's pre-forward hook ran), they are
sharded DTensors again after each step, and the gradients are reduce-scattered (the
ranks see different data, so without it the result differs). Fused kernels must have run.
One spawn runs every pattern (each in its own try, with a gloo timeout so that a failure
cannot hang the others); the tests read its results.
"""
from __future__ import annotations

import datetime
import os
import tempfile
import time
import traceback

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from _common import assert_like_eager

pytestmark = pytest.mark.cpu_only  # gloo processes on CPU

WORLD, STEPS, BATCH, DIM = 2, 3, 8, 16
PATTERNS = ("torch.compile on sharded", "fusion.compile after sharding", "sharding after fusion.compile",
            "sharding after fusion.compile per block")
# each block's a * sigmoid(g) is a fused kernel (alone or as up's epilogue), forward and
# backward, once per block
MIN_KERNELS = 2


class Block(nn.Module):
    """x + down(a * sigmoid(g)), (a, g) = up(x).chunk(2): a sigmoid-gated MLP block."""

    def __init__(self):
        super().__init__()
        self.up = nn.Linear(DIM, 2 * DIM)
        self.down = nn.Linear(DIM, DIM)

    def forward(self, x):
        a, g = self.up(x).chunk(2, -1)
        return x + self.down(a * torch.sigmoid(g))


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.layers = nn.ModuleList([Block(), Block()])
        self.head = nn.Linear(DIM, 1)

    def forward(self, x):
        for layer in self.layers:
            x = layer(x)
        return self.head(x)


def _data():
    g = torch.Generator().manual_seed(1)
    return torch.randn(BATCH, DIM, generator=g), torch.randn(BATCH, 1, generator=g)


def _fused_kernels_run(pattern, runner, model) -> int:
    """Generated kernels that ran (variants built), forward and backward."""
    import fusion
    import fusion.dynamo
    if pattern == "torch.compile on sharded":
        modules = fusion.dynamo.compiled_graphs()
    elif pattern == "sharding after fusion.compile per block":
        modules = list(model.layers)
    else:
        modules = [runner]
    count = 0
    for m in modules:
        for plan in getattr(m, "plans", []):
            for step in plan.steps:
                if step.kernel is not None and step.kernel.variants:
                    count += 1
                    count += sum(1 for b in step.backward.values() for k in b.plan.kernels.values() if k.variants)
    return count


def _train(pattern, dtype, rank):
    """3 AdamW steps of ``pattern`` on this rank's half of the batch; the full parameters
    afterwards (gathered from the shards) and what the checks on the way saw."""
    import torch._dynamo
    from torch.distributed.fsdp import fully_shard
    from torch.distributed.tensor import DTensor

    import fusion
    import fusion.dynamo

    torch.manual_seed(0)
    model = Net().to(dtype)

    def shard(root):
        for layer in root.layers:
            fully_shard(layer)
        fully_shard(root)

    if pattern == "eager":
        shard(model)
        runner = model
    elif pattern == "torch.compile on sharded":
        torch._dynamo.reset()
        fusion.dynamo._compiled.clear()
        shard(model)
        runner = torch.compile(model, backend="fusion")
    elif pattern == "fusion.compile after sharding":
        shard(model)
        runner = fusion.compile(model)
    elif pattern == "sharding after fusion.compile":
        runner = fusion.compile(model)
        shard(runner)
    elif pattern == "sharding after fusion.compile per block":
        for i, layer in enumerate(model.layers):
            model.layers[i] = fusion.compile(layer)
        shard(model)
        runner = model
    else:
        raise ValueError(pattern)

    # FSDP's pre-forward hook all-gathers a block's parameters before its forward: a hook
    # registered after fully_shard runs after FSDP's, and sees them unsharded
    seen = []
    for layer in model.layers:
        layer.register_forward_pre_hook(
            lambda mod, args: seen.append(not isinstance(mod.up.weight, DTensor)
                                          and tuple(mod.up.weight.shape) == (2 * DIM, DIM)))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    x, y = _data()
    x, y = x.to(dtype), y.to(dtype)
    part = slice(rank * BATCH // WORLD, (rank + 1) * BATCH // WORLD)
    sharded_after_steps = []
    for _ in range(STEPS):
        opt.zero_grad()
        nn.functional.mse_loss(runner(x[part]), y[part]).backward()
        opt.step()
        sharded_after_steps.append(all(isinstance(p, DTensor) for p in model.parameters()))
    full = {name: (p.full_tensor() if isinstance(p, DTensor) else p).detach().clone()
            for name, p in model.named_parameters()}
    kernels = 0 if pattern == "eager" else _fused_kernels_run(pattern, runner, model)
    return {"params": full, "hooks_saw_unsharded": seen, "sharded_after_steps": sharded_after_steps,
            "kernels": kernels}


def _worker(rank, world, init_file, out_file):
    os.environ["TRITON_INTERPRET"] = "1"
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world,
                            timeout=datetime.timedelta(seconds=120))
    results = {}
    for pattern, dtype in [("eager", torch.float32), ("eager", torch.float64)] + [(p, torch.float32)
                                                                                   for p in PATTERNS]:
        key = pattern if dtype == torch.float32 else "eager float64"
        try:
            results[key] = _train(pattern, dtype, rank)
        except Exception as e:  # noqa: BLE001  (any failure: reported by the test of this pattern)
            results[key] = {"error": f"{type(e).__name__}: {e}".strip().splitlines()[0][:500],
                            "traceback": traceback.format_exc()}
        dist.barrier()
    if rank == 0:
        torch.save(results, out_file)
    dist.destroy_process_group()


@pytest.fixture(scope="module")
def fsdp_results():
    with tempfile.TemporaryDirectory() as tmp:
        out_file = os.path.join(tmp, "results.pt")
        ctx = mp.spawn(_worker, args=(WORLD, os.path.join(tmp, "init"), out_file), nprocs=WORLD, join=False)
        deadline = time.monotonic() + 420
        while not ctx.join(timeout=5):
            if time.monotonic() > deadline:
                for p in ctx.processes:
                    p.kill()
                pytest.fail("the FSDP2 processes did not finish in 420 s")
        return torch.load(out_file, weights_only=False)


def _single_process_eager():
    torch.manual_seed(0)
    model = Net()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    x, y = _data()
    for _ in range(STEPS):
        opt.zero_grad()
        nn.functional.mse_loss(model(x), y).backward()
        opt.step()
    return {name: p.detach() for name, p in model.named_parameters()}


def test_eager_fsdp2_reference_trains_like_one_process(fsdp_results):
    """The reference itself: eager FSDP2 on gloo equals one process on the whole batch
    (so the comparisons below compare against something that is right)."""
    for key in ("eager", "eager float64"):
        assert "error" not in fsdp_results[key], fsdp_results[key].get("traceback")
    ref = fsdp_results["eager"]
    assert all(ref["hooks_saw_unsharded"]) and len(ref["hooks_saw_unsharded"]) == 2 * STEPS
    assert all(ref["sharded_after_steps"])
    single = _single_process_eager()
    assert list(ref["params"]) == list(single)
    for name, value in single.items():
        torch.testing.assert_close(ref["params"][name], value, rtol=1e-5, atol=1e-6, msg=name)


@pytest.mark.parametrize("pattern", PATTERNS)
def test_fsdp2_parameters_after_3_adamw_steps_match_eager_fsdp2(fsdp_results, pattern):
    got = fsdp_results[pattern]
    assert "error" not in got, f"{pattern}: {got.get('error')}\n{got.get('traceback')}"
    eager, ref64 = fsdp_results["eager"], fsdp_results["eager float64"]
    assert list(got["params"]) == list(eager["params"])
    for name, value in got["params"].items():
        assert_like_eager(f"{pattern}: {name}", value, eager["params"][name], ref64["params"][name])
    # FSDP's hooks ran: every block's forward saw its parameters all-gathered, every step
    # left them sharded
    assert len(got["hooks_saw_unsharded"]) == 2 * STEPS, f"block forwards seen: {got['hooks_saw_unsharded']}"
    assert all(got["hooks_saw_unsharded"]), f"a block ran on sharded parameters: {got['hooks_saw_unsharded']}"
    assert all(got["sharded_after_steps"]), f"parameters not sharded after a step: {got['sharded_after_steps']}"
    assert got["kernels"] >= 2 * MIN_KERNELS, f"{got['kernels']} fused kernels ran (forward + backward)"
