"""A matmul and the pointwise ops it feeds run as ONE Triton matmul kernel.

Forward and backward against eager PyTorch in float64 (fp32, fp16, bf16
inputs, upcast for the reference), odd shapes, batched and transposed
operands, epilogue inputs of every layout, kernel counts through
``fusion.explain``, the save-or-recompute rule, and gradcheck in float64.
"""
from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

import fusion
from fusion.matmul_kernel import RECOMPUTE_MAX_K, MatmulKernel, MatmulVariant, epilogue_weight, gpu_kernel, spill_prune
from fusion.matmul_tiles import TileConfig, gpu_candidates, interpreter_config, values_per_thread, without_spills
from fusion.modes import Mode
from fusion.partition import GroupKind, check_partition, partition
from ir.capture import trace
from ir.lower import lower
from ir.ops import OPS, OpKind

from examples_models import BinaryClassifier, gating
from helpers import DEVICE

# relative to the largest reference value: fp32 sums K products (rounding ~K*eps);
# half types are computed in fp32 and rounded once, within 1-2 ulps of the float64 result
TOL = {torch.float32: 2e-5, torch.float16: 2e-3, torch.bfloat16: 1.6e-2, torch.float64: 1e-12}


def gating_heads(q, k):
    scores = q @ k.transpose(-2, -1)
    return scores * torch.sigmoid(scores)


def lstm_gate(x, h, W, U, b):
    return torch.sigmoid(x @ W + h @ U + b)


def rand(*shape, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed + 7 * len(shape) + sum(shape))
    return torch.randn(shape, generator=g, dtype=torch.float64).to(dtype).to(DEVICE)


def close(actual, expected, dtype, what=""):
    """Within TOL[dtype] of the float64 reference, scaled by its largest value."""
    scale = max(expected.abs().max().item(), 1.0) if expected.numel() else 1.0
    torch.testing.assert_close(actual.double(), expected.double(), rtol=TOL[dtype],
                               atol=TOL[dtype] * scale, msg=lambda m: f"{what}\n{m}")


def check(fn, *inputs, dtype=None, grads=True, fwd_kinds=("matmul",)):
    """Compiled ``fn`` vs eager float64 on the same (rounded) inputs: values, gradients
    of every floating input, and the forward kernels' kinds through explain."""
    dtype = dtype or inputs[0].dtype
    ours = [t.detach().clone().requires_grad_(grads) for t in inputs]
    ref = [t.detach().double().requires_grad_(grads) for t in inputs]
    compiled = fusion.compile(fn)
    report = fusion.explain(compiled, *ours)
    assert [k.kind for k in report.kernels] == list(fwd_kinds), str(report)
    out, expected = compiled(*ours), fn(*ref)
    close(out, expected.detach(), dtype, "forward")
    if grads:
        g = rand(*expected.shape, seed=99)
        out.backward(g.to(out.dtype))
        expected.backward(g.double())
        for k, (a, b) in enumerate(zip(ours, ref)):
            close(a.grad, b.grad, dtype, f"gradient of input {k}")
    return report


# ---- the headline chain and its examples --------------------------------------------------

@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
def test_attention_gating_is_one_matmul_kernel(dtype):
    q, k = rand(37, 19, dtype=dtype), rand(53, 19, dtype=dtype)  # odd M, N, K
    report = check(gating, q, k)
    # backward (K = 19, recomputed): the gradient w.r.t. scores is one matmul-epilogue
    # kernel; the operand gradients are torch matmuls
    assert [k.kind for k in report.backward_kernels] == ["matmul"], str(report)
    assert "kept" not in str(report.saved)
    assert report.kernels[0].flops == 2 * 37 * 53 * 19 + 2 * 37 * 53
    assert report.kernels[0].eager_bytes > report.kernels[0].bytes_read + report.kernels[0].bytes_written


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=str)
def test_attention_gating_batched_heads(dtype):
    q, k = rand(2, 3, 16, 16, dtype=dtype), rand(2, 3, 16, 16, dtype=dtype, seed=1)
    check(gating_heads, q, k)


def test_heads_split_from_one_projection_read_through_strides():
    # [B, L, H, D] -> [B, H, L, D] by transpose: two batch dimensions that do not merge
    q = rand(2, 17, 3, 16).transpose(1, 2)
    k = rand(2, 13, 3, 16, seed=1).transpose(1, 2)
    check(gating_heads, q, k)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
def test_binary_classifier_linear_relu_and_linear_sigmoid_are_one_kernel_each(dtype):
    torch.manual_seed(0)
    model = BinaryClassifier().to(DEVICE, dtype)
    x = rand(37, 10, dtype=dtype)
    report = fusion.explain(model, x)
    assert [k.kind for k in report.kernels] == ["matmul", "matmul"], str(report)
    assert [k.name for k in report.kernels] == ["linear_relu", "linear_sigmoid"]
    ref = BinaryClassifier().to(DEVICE).double()
    ref.load_state_dict({k: v.double() for k, v in model.state_dict().items()})
    out, expected = fusion.compile(model)(x), ref(x.double())
    close(out, expected.detach(), dtype)
    g = rand(37, 1, seed=5)
    out.backward(g.to(dtype))
    expected.backward(g.double())
    for (name, p), q in zip(model.named_parameters(), ref.parameters()):
        close(p.grad, q.grad, dtype, name)  # bias gradients reduced over the batch


def test_lstm_gate_fuses_the_second_matmul_with_add_and_sigmoid():
    x, h, W, U, b = rand(8, 12), rand(8, 20, seed=1), rand(12, 32, seed=2), rand(20, 32, seed=3), rand(32)
    report = check(lstm_gate, x, h, W, U, b)
    assert report.kernels[0].name == "matmul_add_sigmoid"
    # x @ W is an epilogue input, computed by torch before the kernel
    assert any(" matmul: " in i for i in report.kernels[0].inputs), report.kernels[0].inputs


# ---- operands: odd, transposed, broadcast -------------------------------------------------

@pytest.mark.parametrize("M,N,K", [(37, 53, 19), (64, 64, 64), (1, 5, 3), (20, 1, 300)])
def test_odd_shapes(M, N, K):
    check(lambda a, b: torch.tanh(a @ b) * 3.0, rand(M, K), rand(K, N, seed=1))


@pytest.mark.parametrize("case", ["a_transposed", "both_transposed", "sliced"])
def test_transposed_and_strided_operands_are_read_through_strides(case):
    a_t, b_t = rand(19, 37), rand(53, 19, seed=1)   # stored transposed
    a, b = {"a_transposed": (a_t.T, b_t.T.contiguous()), "both_transposed": (a_t.T, b_t.T),
            "sliced": (rand(37, 38)[:, ::2], rand(19, 106, seed=1)[:, ::2])}[case]
    assert not a.is_contiguous()
    check(lambda x, y: torch.sigmoid(x @ y), a, b)


def test_batched_times_shared_weight_merges_batch_into_rows():
    x, w = rand(3, 5, 12), rand(12, 9, seed=1)
    check(lambda x, w: torch.relu(x @ w) + 1.0, x, w)
    layout = _layouts(lambda x, w: torch.relu(x @ w) + 1.0, x, w)[0]
    assert layout.batch == () and layout.M == 15


def test_broadcast_batch_dimensions():
    a, b = rand(2, 1, 5, 12), rand(3, 12, 7, seed=1)
    check(lambda a, b: torch.sigmoid(a @ b), a, b)


# ---- the epilogue: inputs of every layout, bias, extra outputs --------------------------------

def test_epilogue_reads_gate_tile_row_column_scalar_and_mask():
    def fn(a, b, gate, row, col, scale, mask):
        s = a @ b
        return torch.where(mask, torch.sigmoid(s) * gate + row, col * scale)
    a, b = rand(37, 19), rand(19, 53, seed=1)
    gate, row, col, scale = rand(37, 53, seed=2), rand(53, seed=3), rand(37, 1, seed=4), rand(seed=6)
    mask = rand(37, 53, seed=5) > 0
    ours = fusion.compile(fn)(a, b, gate, row, col, scale, mask)
    expected = fn(*[t.double() if t.is_floating_point() else t for t in (a, b, gate, row, col, scale, mask)])
    close(ours, expected, torch.float32)
    layout = _layouts(fn, a, b, gate, row, col, scale, mask)[0]
    assert sorted(layout.kinds) == ["col", "row", "scalar", "tile", "tile"]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_linear_and_addmm_bias_in_the_epilogue(dtype):
    x, w, bias = rand(2, 9, 12, dtype=dtype), rand(24, 12, seed=1, dtype=dtype), rand(24, seed=2, dtype=dtype)
    check(lambda x, w, b: torch.relu(torch.nn.functional.linear(x, w, b)) * 2.0, x, w, bias)
    check(lambda x, w: torch.sigmoid(torch.nn.functional.linear(x, w)), x, w)
    m = rand(18, 12, dtype=dtype)
    check(lambda b, m, w: torch.tanh(torch.addmm(b, m, w)), bias, m, w.T)


def test_matmul_result_also_used_outside_is_written_by_the_same_kernel():
    def fn(q, k):
        s = q @ k.T
        return s, s * torch.sigmoid(s)
    q, k = rand(37, 19), rand(53, 19, seed=1)
    report = fusion.explain(fn, q, k)
    assert [k.kind for k in report.kernels] == ["matmul"] and len(report.kernels[0].outputs) == 2
    s, out = fusion.compile(fn)(q, k)
    es, eout = fn(q.double(), k.double())
    close(s, es, torch.float32)
    close(out, eout, torch.float32)


def test_matmul_feeding_its_own_operand_chain_is_not_fused_into_a_cycle():
    # sigmoid(x) is both A and an epilogue operand: the epilogue cannot compute A
    def fn(x, w):
        a = torch.sigmoid(x)
        return (a @ w) * a
    x, w = rand(16, 16), rand(16, 16, seed=1)
    graph = lower(trace(fn), (x, w)).graph
    check_partition(graph, partition(graph))
    out = fusion.compile(fn)(x, w)
    close(out, fn(x.double(), w.double()), torch.float32)


def test_lone_matmul_stays_a_torch_call():
    report = fusion.explain(lambda a, b: a @ b, rand(8, 4), rand(4, 8))
    assert report.kernels == []


def test_zero_size_and_empty_k():
    fn = lambda a, b: torch.sigmoid(a @ b) * 2.0  # noqa: E731
    assert fusion.compile(fn)(rand(0, 5), rand(5, 7)).shape == (0, 7)
    close(fusion.compile(fn)(torch.zeros(4, 0), torch.zeros(0, 7)), torch.ones(4, 7, dtype=torch.float64),
          torch.float32)


# ---- backward: save or recompute ------------------------------------------------------------

def test_large_k_keeps_the_matmul_result_and_backward_is_pointwise():
    K = RECOMPUTE_MAX_K + 32
    q, k = rand(24, K), rand(40, K, seed=1)
    report = check(gating, q, k)
    assert report.saved[0][1][-1].endswith("(matmul result, kept)"), report.saved
    assert [k.kind for k in report.backward_kernels] == ["pointwise"], str(report)
    assert len(report.kernels[0].outputs) == 2  # the epilogue's result and the kept scores


def test_epilogue_linear_in_the_result_keeps_nothing():
    # d(s * g)/ds = g: with g a constant the backward never reads s, so nothing is
    # kept even for a large K (with g needing a gradient, s is kept: dL/dg = grad * s)
    fn = lambda q, k, g: (q @ k.T) * g  # noqa: E731
    q, k, g = rand(8, 160).requires_grad_(), rand(6, 160, seed=1).requires_grad_(), rand(8, 6, seed=2)
    report = fusion.explain(fn, q, k, g)
    assert not any("kept" in v for _, vals in report.saved for v in vals), report.saved
    fusion.compile(fn)(q, k, g).sum().backward()
    qd, kd = q.detach().double().requires_grad_(), k.detach().double().requires_grad_()
    fn(qd, kd, g.double()).sum().backward()
    close(q.grad, qd.grad, torch.float32)
    close(k.grad, kd.grad, torch.float32)
    report = fusion.explain(fn, q, k, g.clone().requires_grad_())
    assert any("kept" in v for _, vals in report.saved for v in vals), report.saved


@pytest.mark.parametrize("fn,shapes", [
    (gating, [(5, 3), (4, 3)]),
    (gating_heads, [(2, 2, 3, 4), (2, 2, 5, 4)]),
    (lambda x, w, b: torch.tanh(torch.nn.functional.linear(x, w, b)), [(2, 3, 4), (5, 4), (5,)]),
    (lstm_gate, [(3, 4), (3, 5), (4, 6), (5, 6), (6,)]),
], ids=["gating", "heads", "linear_bias", "lstm_gate"])
def test_gradcheck_float64(fn, shapes):
    inputs = [rand(*s, dtype=torch.float64, seed=k).requires_grad_() for k, s in enumerate(shapes)]
    # batched: gradcheck's fast mode (a random projection), each evaluation is a batch grid
    assert torch.autograd.gradcheck(fusion.compile(fn), inputs, fast_mode=len(shapes[0]) > 3)


def test_gradcheck_with_the_result_kept(monkeypatch):
    monkeypatch.setattr("fusion.matmul_kernel.RECOMPUTE_MAX_K", 2)  # K = 3 is "large"
    q = rand(3, 3, dtype=torch.float64).requires_grad_()
    k = rand(4, 3, dtype=torch.float64, seed=1).requires_grad_()
    compiled = fusion.compile(gating)
    assert "kept" in str(fusion.explain(compiled, q, k).saved)
    assert torch.autograd.gradcheck(compiled, [q, k])


# ---- configuration: tiles, tf32, the table ----------------------------------------------------

def test_matmul_entries_declare_their_form():
    for name, d in OPS.items():
        if d.kind == OpKind.MATMUL:
            assert d.form is not None, f"{name} lacks form (which operand is A, B, bias)"


def test_tile_heuristics():
    assert interpreter_config(37, 53, 19).constexprs == {"BLOCK_M": 64, "BLOCK_N": 64, "BLOCK_K": 32,
                                                         "GROUP_M": 8}
    big = gpu_candidates(4096, 4096, 64, torch.float16, "ieee", heavy_epilogue=False)
    assert (big[0].BLOCK_M, big[0].BLOCK_N, big[0].num_warps) == (128, 64, 4) and len(big) == 5
    assert big[0].num_stages == 2  # K = 64 is one BLOCK_K step: no deeper pipeline
    # a heavy epilogue keeps to tiles of at most 64 accumulator values a thread, where it
    # does not spill (tests/test_kernel_cost.py compiles them)
    heavy = gpu_candidates(4096, 4096, 4096, torch.float16, "ieee", heavy_epilogue=True)
    assert all(values_per_thread(c) <= 64 for c in heavy) and len(heavy) == 3
    assert heavy[0].num_stages == 3
    assert epilogue_weight(_matmul_kernel(gating, rand(37, 19), rand(53, 19)).epilogue, ()) == 4
    assert gpu_candidates(512, 512, 512, torch.float32, "tf32", False)[0].BLOCK_M == 128
    assert gpu_candidates(512, 512, 512, torch.float32, "ieee", False)[0].BLOCK_M == 64
    small = gpu_candidates(8, 1, 10, torch.float32, "ieee", heavy_epilogue=False)
    assert len(small) == 1 and small[0].BLOCK_M <= 64


def test_tf32_follows_torch_flag_on_cuda_only():
    graph = lower(trace(gating), (rand(37, 19), rand(53, 19))).graph
    group = next(g for g in partition(graph) if g.kind == GroupKind.MATMUL_EPILOGUE)
    old = torch.backends.cuda.matmul.allow_tf32
    try:
        for flag in (False, True):
            torch.backends.cuda.matmul.allow_tf32 = flag
            assert MatmulKernel(group, Mode.TRITON).precision() == ("tf32" if flag else "ieee")
            assert MatmulKernel(group, "triton-interpreter").precision() == "ieee"
    finally:
        torch.backends.cuda.matmul.allow_tf32 = old


def test_generated_source_reads_like_the_tutorial():
    q, k = rand(37, 19), rand(53, 19)
    src = fusion.explain(gating, q, k).kernels[0].source
    for piece in ("stride_am, stride_ak", "stride_bk, stride_bn", "offs_m", "GROUP_M: tl.constexpr",
                  "mask=mask", "tl.dot(a, b, acc", "sigmoid(acc", "# acc is %3 = matmul"):
        assert piece in src, piece


def _matmul_kernel(fn, *inputs) -> MatmulKernel:
    compiled = fusion.compile(fn)
    compiled(*inputs)
    plan = compiled.plans[0]
    return next(k for k in plan.kernels.values() if isinstance(k, MatmulKernel))


def _layouts(fn, *inputs):
    """The layouts the matmul kernels of ``fn`` planned, after one call."""
    compiled = fusion.compile(fn)
    compiled(*inputs)
    plan = compiled.plans[0]
    return [lay for k in plan.kernels.values() if isinstance(k, MatmulKernel)
            for lay in k.layouts.values()]


def test_report_names_tile_config_and_flops():
    text = str(fusion.explain(gating, rand(37, 19), rand(53, 19)))
    assert "[matmul]" in text and "FLOPs" in text and "BLOCK 64x64x32" in text


def test_a_gpu_runs_the_first_candidate_that_does_not_spill():
    """Triton reports a kernel's spills once it is compiled for the card (``n_spills``):
    the pick, and what autotuning keeps, pass over configs that spill. A stand-in kernel
    here spills at BLOCK_N = 128 and cannot load at BLOCK_M = 256 (out of shared memory)."""
    triton = pytest.importorskip("triton")

    class Compiled:
        def __init__(self, spills):
            self.n_spills = spills

        def _init_handles(self):
            pass

    class Kernel:
        def warmup(self, *args, grid, **kwargs):
            if kwargs["BLOCK_M"] == 256:
                raise RuntimeError("out of resources: shared memory")
            return Compiled(8 if kwargs["BLOCK_N"] == 128 else 0)

    configs = [TileConfig(256, 64, 64, 8, 8, 3), TileConfig(128, 128, 64, 8, 4, 3),
               TileConfig(128, 64, 64, 8, 4, 3)]
    emitted = SimpleNamespace(arg_names=("a_ptr",))
    variant = MatmulVariant(emitted, Kernel(), configs[0], configs, [])
    fn, launch = gpu_kernel(variant, [torch.zeros(1)])
    assert launch == configs[2].launch_kwargs
    tuned = [triton.Config(c.constexprs, num_warps=c.num_warps, num_stages=c.num_stages) for c in configs]
    assert spill_prune(variant)(tuned, {"a_ptr": torch.zeros(1)}) == tuned[2:]
    assert without_spills(configs, lambda c: c.BLOCK_N) == configs[:1]  # all spill: the least
