"""Random programs from the op table, compiled and compared with eager (hypothesis).

CI runs a bounded number (FUSION_RANDOM_GRAPHS, default 300); tools/fuzz_graphs.py
runs any number. Failures hypothesis found are kept below as regression tests.
"""
import os

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import random_graphs

pytestmark = pytest.mark.cpu_only  # CPU tensors in the interpreter

N_GRAPHS = int(os.environ.get("FUSION_RANDOM_GRAPHS", "300"))


@settings(max_examples=N_GRAPHS, deadline=None, derandomize=True, database=None,
          suppress_health_check=list(HealthCheck))
@given(data=st.data(), n_steps=st.integers(1, 6), seed=st.integers(0, 2**16))
def test_random_program_matches_eager(data, n_steps, seed):
    prog = random_graphs.generate(lambda name, opts: data.draw(st.sampled_from(list(opts)), label=name),
                                  n_steps)
    _, problem = random_graphs.check(prog, seed)
    assert not problem, f"{problem}\n{prog.describe()}"


# Regressions: what the fuzzer found, shrunk by hand to the smallest program.

def _grads(fn, *args):

    import fusion
    ours_in = [a.detach().clone().requires_grad_(a.requires_grad) for a in args]
    ref_in = [a.detach().clone().requires_grad_(a.requires_grad) for a in args]
    ours, ref = fusion.compile(fn)(*ours_in), fn(*ref_in)
    assert ours.requires_grad == ref.requires_grad
    if ref.requires_grad:
        ours.sum().backward()
        ref.sum().backward()
    return [a.grad for a in ours_in], [a.grad for a in ref_in]


def test_relu_gradient_passes_nan_through_like_torch():
    import torch
    x = torch.tensor([-1.0, 0.0, 2.0], requires_grad=True)  # log(-1) = NaN
    ours, ref = _grads(lambda x: torch.relu(torch.log(x)) + torch.log(x), x)
    torch.testing.assert_close(ours[0], ref[0], equal_nan=True)


def test_gradients_accumulate_in_the_inputs_dtype():
    import torch
    x = torch.tensor([0.2839, 1.5111, 0.3134], dtype=torch.float64, requires_grad=True)

    def f(x):
        e = torch.exp(x).to(torch.bfloat16)
        return torch.minimum(e.to(torch.float64), e)  # a tie: half the gradient each way

    ours, ref = _grads(f, x)
    torch.testing.assert_close(ours[0], ref[0], rtol=1e-12, atol=0)


def test_inputs_without_a_gradient_path_get_none_and_outputs_do_not_require_grad():
    import torch
    a = torch.randn(1, 1, requires_grad=True)
    c = torch.randn(5, 7)
    ours, ref = _grads(lambda a, c: torch.where(a == c, c, 0.0) * 2, a, c)  # a only feeds a comparison
    assert ours[0] is None and ref[0] is None
    b = torch.randn(5, 7, requires_grad=True)
    ours, ref = _grads(lambda a, b: torch.sigmoid(b) * (a > 0), a, b)
    assert ours[0] is None and ref[0] is None
    torch.testing.assert_close(ours[1], ref[1])
