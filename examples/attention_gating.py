"""Attention gating, the seed's example: scores = q @ k.T; out = scores * sigmoid(scores).

Prints the IR, what was fused, and the generated kernels, then checks the
compiled function (forward and backward) against eager PyTorch. Runs on a
GPU when there is one, otherwise on CPU through Triton's interpreter at a
modest size.

    python examples/attention_gating.py [--size 256] [--heads 4]
"""
import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _device import DEVICE  # noqa: E402  (sets TRITON_INTERPRET before triton loads)

import torch  # noqa: E402

import fusion  # noqa: E402


def gating(q, k):
    """The seed's chain: one matmul, a sigmoid and a product."""
    scores = q @ k.T
    return scores * torch.sigmoid(scores)


def gating_heads(q, k):
    """The same for [batch, heads, length, head_dim] tensors."""
    scores = q @ k.transpose(-2, -1)
    return scores * torch.sigmoid(scores)


def check(fn, *inputs, dtype):
    compiled = fusion.compile(fn)
    ours_in = [t.detach().clone().requires_grad_() for t in inputs]
    ref_in = [t.detach().double().requires_grad_() for t in inputs]
    t0 = time.perf_counter()
    out = compiled(*ours_in)
    first_ms = (time.perf_counter() - t0) * 1e3
    ref = fn(*ref_in)
    grad = torch.randn_like(ref)
    out.backward(grad.to(dtype))
    ref.backward(grad)
    tol = {torch.float32: 2e-3, torch.float16: 2e-2, torch.bfloat16: 8e-2}[dtype]
    torch.testing.assert_close(out.double(), ref.detach(), rtol=tol, atol=tol)
    for a, b in zip(ours_in, ref_in):
        torch.testing.assert_close(a.grad.double(), b.grad, rtol=tol, atol=tol * 10)
    print(f"  {fn.__name__} {dtype}: forward and gradients match eager (float64 reference); "
          f"compile + first call {first_ms:.0f} ms")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    on_gpu = DEVICE.type == "cuda"
    parser.add_argument("--size", type=int, default=4096 if on_gpu else 128, help="M = N")
    parser.add_argument("--dim", type=int, default=64, help="K, the head dimension")
    parser.add_argument("--heads", type=int, default=4)
    args = parser.parse_args()
    torch.manual_seed(0)
    q = torch.randn(args.size, args.dim, device=DEVICE)
    k = torch.randn(args.size, args.dim, device=DEVICE)

    report = fusion.explain(gating, q.clone().requires_grad_(), k)
    print(report)
    print("\n== Generated forward kernel(s) ==")
    for kern in report.kernels:
        print(f"# {kern.name} ({kern.kind}) from {kern.path}\n{kern.source}")

    print(f"== Checks on {DEVICE} ==")
    dtypes = (torch.float32, torch.float16, torch.bfloat16)
    for dtype in dtypes:
        check(gating, q.to(dtype), k.to(dtype), dtype=dtype)
    qh = torch.randn(2, args.heads, args.size // 2, args.dim, device=DEVICE)
    kh = torch.randn(2, args.heads, args.size // 2, args.dim, device=DEVICE)
    check(gating_heads, qh, kh, dtype=torch.float32)
    check(gating_heads, qh.half(), kh.half(), dtype=torch.float16)
    heads = fusion.explain(gating_heads, qh.clone().requires_grad_(), kh)
    for name, r in (("gating", report), ("gating_heads", heads)):
        # the point of matmul epilogues: the matmul and its sigmoid-mul epilogue are ONE kernel
        assert [k.kind for k in r.kernels] == ["matmul"], f"{name}: {[k.kind for k in r.kernels]}"
        print(f"\n{name}: {len(r.kernels)} forward kernel(s) "
              f"[{', '.join(k.kind for k in r.kernels)}; tiles {r.kernels[0].config}], "
              f"{len(r.backward_kernels)} backward kernel(s) "
              f"[{', '.join(k.kind for k in r.backward_kernels)}]; not fused: "
              f"{', '.join(op for op, _ in r.extern) or 'nothing'}")


if __name__ == "__main__":
    main()
