"""The judge of the random-program tests: is our result right, element by element?

Eager PyTorch is the reference, with two witnesses against it where its own
rounding is what went wrong:

* eager in float64 on the same inputs (``wide``): we compute fp16/bf16 in fp32
  and round once, so we are often closer to it than to eager in the same dtype;
* the float64 result rounded once to the output's dtype (``rounded``), used
  where eager disagrees with it: an fp16 value past 65504 that float64 says
  rounds to inf while eager, rounding after every op, returns a finite number
  or NaN.

For gradients the float64 reference is itself summed carefully
(``accurate_grads``): autograd adds the contributions of a value's uses in its
own order, and at x = -1e-40 the terms of d(x/x)/dx are ±1e40, so eager in
float64 loses any other term added between them (absorption). Summed with
compensation, the float64 gradient keeps it.

A judge that flags correct results hides real ones; one that accepts anything
hides them too: an element far from eager and from every float64 witness
still fails (tests/test_graph_judge.py holds both kinds of case).
"""
from __future__ import annotations

import torch

# tolerances by the least precise dtype a program computes in (gradients: 8x)
RTOL = {torch.float64: 1e-9, torch.float32: 2e-5, torch.float16: 4e-3, torch.bfloat16: 3e-2}


def compare(ours, eager, wide, dtype, grad=False, accurate=None, magnitude=None) -> str:
    """Elementwise judgement; "" when every element passes, else what differs.

    An element passes when it is close to eager in ``dtype``, or to eager in
    float64 (``wide``), or, where eager disagrees with the float64 result rounded
    once to the output's dtype, close to that rounded result. ``accurate``: a
    float64 result more careful than eager's (gradients summed without
    absorption; default ``wide``); ``magnitude``: per element, the size of the
    terms its sums cancelled (``accurate_grads``), which widens the tolerance
    by what any order of summation in ``dtype`` may lose. Non-finite values
    must match exactly.
    """
    o, e, w = ours.detach().double(), eager.detach().double(), wide.detach().double()
    best = (accurate if accurate is not None else wide).detach()
    rounded = best.to(ours.dtype).double()  # rounded once, as our kernels round
    rtol = RTOL[dtype] * (8 if grad else 1)
    finite = torch.isfinite(w) & torch.isfinite(e)
    scale = w[finite].abs().mean().item() if finite.any() else 1.0
    atol = rtol * (1.0 + scale)
    if magnitude is not None:  # a few roundings of each term, in the least precise dtype
        atol = atol + 4 * torch.finfo(dtype).eps * torch.nan_to_num(magnitude.double(), posinf=0.0)

    def close(a, b):
        same = (a == b) | (torch.isnan(a) & torch.isnan(b))
        # a tolerance relative to an infinity would admit any number: those must be equal
        both_finite = torch.isfinite(a) & torch.isfinite(b)
        return same | (both_finite & ((a - b).abs() <= atol + rtol * b.abs()))

    eager_is_outlier = ~close(e, rounded)
    ok = close(o, e) | close(o, w) | (eager_is_outlier & close(o, rounded))
    if bool(ok.all()):
        return ""
    bad = (~ok).nonzero()[0].tolist()
    at = tuple(bad)
    return (f"{int((~ok).sum())} of {ok.numel()} elements differ; first at {bad}: ours {o[at].item()!r}"
            f" eager {e[at].item()!r} float64 {w[at].item()!r} (rounded once: {rounded[at].item()!r})")


def accurate_grads(steps: dict, inputs: list, xs: list, seeds: dict, wanted: list) -> list:
    """Float64 gradients by reverse mode over a program's steps, each value's
    gradient the compensated sum of its uses' contributions, with the size of
    the terms that sum cancelled.

    ``steps``: value index -> (eager callable, refs, attrs), a ref being a value
    index or ("const", v); ``inputs``: the value index of each input, ``xs`` their
    float64 tensors; ``seeds``: output value index -> its incoming gradient;
    ``wanted``: the value indices whose gradients are returned. Each step's own
    derivative comes from autograd on that step alone, every use of a value
    (x / x uses x twice) a separate leaf, so no sum is left to autograd. Returns
    per wanted value ``(gradient, magnitude)`` (None, None without a path):
    ``magnitude`` sums |term| over every sum on the way (each step's Jacobian
    applied to the magnitudes, in absolute value), so ``eps * magnitude`` bounds
    what any evaluation order may lose to cancellation in the dtype of ``eps``.
    """
    values = dict(zip(inputs, (x.detach() for x in xs)))
    leaves, outs = {}, {}
    for k in sorted(steps):
        fn, refs, attrs = steps[k]
        args = [values[r].clone().requires_grad_(values[r].is_floating_point()) if isinstance(r, int)
                else r[1] for r in refs]
        with torch.enable_grad():
            outs[k] = fn(*args, **attrs)
        leaves[k] = [(r, a) for r, a in zip(refs, args) if isinstance(r, int) and a.requires_grad]
        values[k] = outs[k].detach()
    terms = {k: [(g.double(), g.double().abs())] for k, g in seeds.items()}
    for k in sorted(steps, reverse=True):
        g, m = _total(terms.get(k, []))
        if g is None or not leaves[k] or not outs[k].requires_grad:
            continue
        at = [a for _, a in leaves[k]]
        grads = torch.autograd.grad(outs[k], at, g.to(outs[k].dtype), allow_unused=True, retain_graph=True)
        mags = torch.autograd.grad(outs[k], at, m.to(outs[k].dtype), allow_unused=True)
        for (r, _), gr, mr in zip(leaves[k], grads, mags):
            if gr is not None:
                terms.setdefault(r, []).append((gr.double(), mr.double().abs()))
    return [_total(terms.get(k, [])) for k in wanted]


def _total(terms: list) -> tuple:
    """(compensated sum of the gradients, sum of the magnitudes) of ``terms``."""
    if not terms:
        return None, None
    return compensated_sum([g for g, _ in terms]), sum(m for _, m in terms)


def compensated_sum(terms: list):
    """Elementwise sum of same-shaped tensors, Neumaier-compensated: exact where
    large terms cancel (1e40 + x - 1e40 gives x, not 0). None for no terms."""
    if not terms:
        return None
    total, carry = terms[0].clone(), torch.zeros_like(terms[0])
    for t in terms[1:]:
        s = total + t
        carry += torch.where(total.abs() >= t.abs(), (total - s) + t, (t - s) + total)
        total = s
    # the carry of an inf or NaN sum is NaN (inf - inf): the plain sum is the answer there
    return torch.where(torch.isfinite(total), total + carry, total)
