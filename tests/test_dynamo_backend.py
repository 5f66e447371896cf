"""torch.compile(model, backend="fusion"): Dynamo's graphs through our pipeline."""
import pytest
import torch
import torch._dynamo

import fusion.dynamo

from examples_models import BinaryClassifier, gating

pytestmark = pytest.mark.cpu_only  # CPU tensors through Dynamo


def _kernels_used():
    return [k for c in fusion.dynamo.compiled_graphs() for p in c.plans
            for k in p.kernels.values() if k.variants]


def setup_function():
    torch._dynamo.reset()
    fusion.dynamo.reset()


def test_backend_is_registered_by_entry_point():
    assert "fusion" in torch._dynamo.list_backends()


def test_gating_forward_and_backward_match_eager():
    q, k = torch.randn(37, 16, requires_grad=True), torch.randn(29, 16, requires_grad=True)
    out = torch.compile(gating, backend="fusion")(q, k)
    q2, k2 = q.detach().double().requires_grad_(), k.detach().double().requires_grad_()
    ref = gating(q2, k2)
    torch.testing.assert_close(out.double(), ref, rtol=1e-5, atol=1e-5)
    out.sum().backward()
    ref.sum().backward()
    torch.testing.assert_close(q.grad.double(), q2.grad, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(k.grad.double(), k2.grad, rtol=1e-4, atol=1e-4)
    assert _kernels_used(), "no fused kernel ran"


def test_classifier_trains_like_eager():
    torch.manual_seed(0)
    eager = BinaryClassifier()
    ours = BinaryClassifier()
    ours.load_state_dict(eager.state_dict())
    compiled = torch.compile(ours, backend="fusion")
    x, y = torch.randn(32, 10), (torch.rand(32, 1) > 0.5).float()
    for model in (compiled, eager):
        opt = torch.optim.SGD(model.parameters(), lr=0.5)
        for _ in range(3):
            opt.zero_grad()
            torch.nn.functional.binary_cross_entropy(model(x), y).backward()
            opt.step()
    for a, b in zip(ours.parameters(), eager.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    assert _kernels_used()


def test_graph_break_still_works():
    def f(x):
        y = torch.sigmoid(x) * x
        print("a graph break")  # Dynamo cannot capture print: two graphs
        return torch.tanh(y) + 1

    x = torch.randn(33, 7)
    torch.testing.assert_close(torch.compile(f, backend="fusion")(x), f(x))
    assert len(fusion.dynamo.compiled_graphs()) == 2


def test_precision_option_reaches_the_kernels():
    """options={"precision": "exact"}: the fp32 sigmoid is computed in fp64 and rounded once."""
    x = torch.randn(33, 7)
    out = torch.compile(lambda x: torch.sigmoid(x) * x, backend="fusion", options={"precision": "exact"})(x)
    torch.testing.assert_close(out, torch.sigmoid(x) * x)
    (kernel,) = _kernels_used()
    assert kernel.numerics == "exact"
    assert "tl.float64" in next(iter(kernel.variants.values())).emitted.source
    with pytest.raises(ValueError, match="unknown options"):
        fusion.dynamo.fusion_backend(None, [], options={"mode": "max-autotune"})
