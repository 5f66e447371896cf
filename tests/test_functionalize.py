"""ir/functionalize.py: graphs with in-place ops, rewritten without, run like eager.

Every check compares with EAGER PyTorch on a copy of the same module or function:
outputs, gradients (backward through the functionalized graph), and the final values
of every input and buffer. Graphs come from our in-place-keeping fx tracer
(ir.inplace_ops.symbolic_trace) and from Dynamo (torch.compile with a backend that
functionalizes the graph it is given and runs it with run_functionalized: Dynamo
itself passes parameters and buffers, and returns inputs it was handed).
tests/test_functionalize_aliasing.py has the scan and the random programs;
tests/test_functionalize_edges.py dtypes, eager's errors and grad mode inside the graph.
"""
import copy
import operator

import pytest
import torch
import torch._dynamo
import torch.fx as fx
import torch.nn as nn
import torch.nn.functional as F

from ir.functionalize import functionalize, may_mutate, run_functionalized

from helpers import trace_keeping_inplace as symbolic_trace

SOURCES = ["fx", "dynamo"]


def setup_function():
    torch._dynamo.reset()


def compiled(model, example, source):
    """``model`` captured by ``source``, functionalized, run by run_functionalized.
    The returned callable updates ``model``'s buffers and the caller's inputs."""
    if source == "fx":
        gm = symbolic_trace(model)
        f = functionalize(gm, list(example))
        assert may_mutate(gm) or f.gm is gm, "may_mutate missed a write"
        call = lambda *args: run_functionalized(f, gm, list(args))
        call.functionalized = f
        return call
    captured = []

    def backend(gm, example_inputs):
        f = functionalize(gm, list(example_inputs))
        assert may_mutate(gm) or f.gm is gm, "may_mutate missed a write"
        captured.append(f)
        return lambda *args: run_functionalized(f, gm, list(args))
    call = torch.compile(model, backend=backend, fullgraph=True)
    call.captured = captured
    return call


def _clone(values):
    return [v.detach().clone().requires_grad_(v.requires_grad) if isinstance(v, torch.Tensor) else v
            for v in values]


def _leaves(out):
    return [t for t in torch.utils._pytree.tree_leaves(out) if isinstance(t, torch.Tensor)]


def check(make, inputs, source, calls=1, grad=True, compile=compiled):
    """Run eager and ours ``calls`` times on clones of ``inputs``; compare outputs,
    mutated inputs, gradients (of float inputs and parameters) and module state.
    ``compile(model, example, source)`` makes ours (tests/test_mutation_catalogue.py
    passes the public entry points)."""
    eager = make()
    ours = copy.deepcopy(eager) if isinstance(eager, nn.Module) else eager
    run = None
    for _ in range(calls):
        xe, xo = _clone(inputs), _clone(inputs)
        if run is None:
            run = compile(ours, _clone(inputs), source)
        ref, out = eager(*xe), run(*xo)
        torch.testing.assert_close(out, ref)
        for a, b in zip(xo, xe):
            torch.testing.assert_close(a, b)
            assert not isinstance(a, torch.Tensor) or a.requires_grad == b.requires_grad
        outs = [(o, r) for o, r in zip(_leaves(out), _leaves(ref)) if r.requires_grad]
        if grad and outs:
            cot = [torch.randn_like(r) for _, r in outs]
            sum((o * c).sum() for (o, _), c in zip(outs, cot)).backward()
            sum((r * c).sum() for (_, r), c in zip(outs, cot)).backward()
            for a, b in zip(xo, xe):
                if isinstance(a, torch.Tensor) and a.is_leaf and a.requires_grad:
                    torch.testing.assert_close(a.grad, b.grad)
    if isinstance(eager, nn.Module):
        for (name, a), b in zip(ours.state_dict().items(), eager.state_dict().values()):
            torch.testing.assert_close(a, b, msg=name)
        for (name, a), b in zip(ours.named_parameters(), eager.parameters()):
            torch.testing.assert_close(a.grad, b.grad, msg=name)
    return run


def fn(f):
    """A maker for a plain function (check() makes fresh modules, functions are reused)."""
    return lambda: f


# ---- the brief's examples -----------------------------------------------------------

class ReluInplace(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc, self.act = nn.Linear(8, 8), nn.ReLU(inplace=True)

    def forward(self, x):
        h = self.fc(x)
        return self.act(h) + h  # eager: relu(h) + relu(h)


def sigmoid_alias_iadd(x):
    h = torch.sigmoid(x)
    g = h
    g += 1
    return h * 2


def sigmoid_setitem(x):
    h = torch.sigmoid(x)
    h[:, 0] = 0.0
    return h * x


@pytest.mark.parametrize("source", SOURCES)
@pytest.mark.parametrize("make", [ReluInplace, fn(sigmoid_alias_iadd), fn(sigmoid_setitem)],
                         ids=["relu_inplace_module", "iadd_through_alias", "setitem"])
def test_brief_examples(make, source):
    torch.manual_seed(0)
    # eager cannot differentiate the sigmoid ones (sigmoid's saved output is overwritten);
    # functionalized graphs can: we are more permissive there, never less
    check(make, [torch.randn(4, 8, requires_grad=True)], source, grad=make is ReluInplace)


def test_plain_symbolic_trace_loses_iadd():
    # Why ir.inplace_ops.symbolic_trace exists: fx Proxies have no __iadd__, so
    # `g += 1` is traced as `g = g + 1` and the write to h is lost before any pass runs
    gm = fx.symbolic_trace(sigmoid_alias_iadd)
    assert operator.iadd not in [n.target for n in gm.graph.nodes]
    assert operator.iadd in [n.target for n in symbolic_trace(sigmoid_alias_iadd).graph.nodes]


# ---- in-place ops on intermediates, fx (one graph each: cheap) ---------------------------

INPLACE_OPS = {
    "add_": lambda h, x: h.add_(x, alpha=2),
    "mul_": lambda h, x: h.mul_(x),
    "sigmoid_": lambda h, x: h.sigmoid_(),
    "clamp_": lambda h, x: h.clamp_(-0.5, 0.5),
    "masked_fill_": lambda h, x: h.masked_fill_(x > 0, 3.0),
    "copy_": lambda h, x: h.copy_(x[0]),  # broadcasts
    "zero_": lambda h, x: h.zero_(),
    "fill_": lambda h, x: h.fill_(2.5),
    "iadd": lambda h, x: operator.iadd(h, x),
    "torch.relu_": lambda h, x: torch.relu_(h),
    "F.relu(True)": lambda h, x: F.relu(h, True),
    "F.leaky_relu(inplace)": lambda h, x: F.leaky_relu(h, 0.2, inplace=True),
    "setitem_int": lambda h, x: h.__setitem__(1, x[0]),
    "setitem_slice": lambda h, x: h.__setitem__((slice(None), slice(1, 3)), 7.0),
    "setitem_mask": lambda h, x: h.__setitem__(x > 0.5, -1.0),
    "setitem_index_tensor": lambda h, x: h.__setitem__(torch.tensor([0, 2]), x[:2] * 3),
    "aten.add_": lambda h, x: torch.ops.aten.add_.Tensor(h, x),
    "index_add_": lambda h, x: h.index_add_(0, torch.tensor([1, 1]), x[:2]),
}


@pytest.mark.parametrize("op", INPLACE_OPS, ids=list(INPLACE_OPS))
def test_inplace_op_on_intermediate_fx(op):
    body = INPLACE_OPS[op]

    def f(x):
        h = x * 1.5
        body(h, x)
        return h * x
    torch.manual_seed(1)
    run = check(fn(f), [torch.randn(4, 5, requires_grad=True)], "fx")
    assert run.functionalized.notes, "nothing was rewritten"


# ---- mutation through views ----------------------------------------------------------------

def views(x):
    h = x * 1.5
    h.t()[0].mul_(3)                      # transpose then select
    h.view(-1)[::3].fill_(0.25)           # view then strided slice
    h.reshape(2, 2, 6)[:, 1].add_(1)      # reshape (a view here)
    v = h[:, 2]                           # read before the write, after it in eager
    h.narrow(1, 0, 2).clamp_(max=0.1)
    return v * 2, h + 0


def chunk_input(x):
    a, b = x.chunk(2, 1)  # multi-output views: in-place allowed without grad
    a.zero_()
    b.mul_(2)
    return x.sum(1)


@pytest.mark.parametrize("source", SOURCES)
def test_mutation_through_views(source):
    torch.manual_seed(2)
    check(fn(views), [torch.randn(4, 6, requires_grad=True)], source)


@pytest.mark.parametrize("source", SOURCES)
def test_chunk_views_of_an_input_written_back(source):
    check(fn(chunk_input), [torch.randn(3, 8)], source)


# ---- the caller's inputs ---------------------------------------------------------------------

def add_and_return_input(x, y):
    x.add_(y)
    return x


def mul_and_return_view(x):
    x.mul_(2)
    return x.t(), x[1]


@pytest.mark.parametrize("source", SOURCES)
def test_mutated_input_is_returned_as_the_callers_tensor(source):
    x, y = torch.randn(3, 4), torch.randn(4)
    run = compiled(fn(add_and_return_input)(), [x.clone(), y], source)
    x_ours, x_eager = x.clone(), x.clone()
    out = run(x_ours, y)
    assert out is x_ours  # eager returns x itself
    torch.testing.assert_close(x_ours, add_and_return_input(x_eager, y))


@pytest.mark.parametrize("source", SOURCES)
def test_returned_views_of_a_mutated_input_alias_it(source):
    x = torch.randn(3, 4)
    run = compiled(fn(mul_and_return_view)(), [x.clone()], source)
    ours = x.clone()
    t, row = run(ours)
    ref_t, ref_row = mul_and_return_view(x)
    torch.testing.assert_close((t, row), (ref_t, ref_row))
    ours.zero_()  # they are views: the caller sees the same memory, as in eager
    assert t.abs().sum() == 0 and row.abs().sum() == 0


def test_non_leaf_input_written_back_keeps_gradients():
    def f(x, w):
        x.mul_(w)
        return x.sum(0)
    a = torch.randn(3, 4, requires_grad=True)
    w = torch.randn(4, requires_grad=True)
    a2, w2 = a.detach().clone().requires_grad_(), w.detach().clone().requires_grad_()
    run = compiled(fn(f)(), [a * 1, w], "fx")
    x_ours, x_eager = a * 1, a2 * 1
    out, ref = run(x_ours, w), f(x_eager, w2)
    torch.testing.assert_close(out, ref)
    (out.sum() + x_ours.sum()).backward()  # the written-back x carries the mul's history
    (ref.sum() + x_eager.sum()).backward()
    torch.testing.assert_close((a.grad, w.grad), (a2.grad, w2.grad))


def test_constant_made_at_trace_time_is_not_written_back():
    def f(x):
        c = torch.zeros(3)  # fx bakes it as _tensor_constant0; eager makes it afresh per call
        c.add_(x)
        return c * x  # (c * 2 would be computed at trace time: fx sees no proxy in it)
    check(fn(f), [torch.randn(3)], "fx", calls=2)


def test_out_keyword_writes_back():
    def f(x, buf):
        torch.sigmoid(x, out=buf)
        return buf * 2
    check(fn(f), [torch.randn(5), torch.zeros(5)], "fx")


# ---- batch norm: running stats exactly as eager after 2 calls ---------------------------------

class BN(nn.Module):
    def __init__(self, dims):
        super().__init__()
        self.bn = nn.BatchNorm2d(3) if dims == 2 else nn.BatchNorm1d(3)
        self.bn.weight.data.uniform_(0.5, 1.5)

    def forward(self, x):
        return torch.sigmoid(self.bn(x)) * 2


class FunctionalBN(nn.Module):
    def __init__(self):
        super().__init__()
        self.register_buffer("mean", torch.zeros(3))
        self.register_buffer("var", torch.ones(3))
        self.register_buffer("steps", torch.zeros((), dtype=torch.long))

    def forward(self, x):
        self.steps.add_(1)
        out = F.batch_norm(x, self.mean, self.var, None, None, True, 0.1, 1e-5).relu_()
        return out * self.steps + self.mean  # read again after the writes (a second get_attr)


@pytest.mark.parametrize("source", SOURCES)
@pytest.mark.parametrize("dims", [1, 2])
def test_batchnorm_train_updates_running_stats_like_eager(dims, source):
    torch.manual_seed(3)
    x = torch.randn(4, 3, 5, 5) if dims == 2 else torch.randn(6, 3)
    run = check(lambda: BN(dims), [x.requires_grad_()], source, calls=2)
    f = run.functionalized if source == "fx" else run.captured[0]
    assert len(f.writebacks) == 3  # running_mean, running_var, num_batches_tracked


def test_functional_batch_norm_on_buffers():
    check(FunctionalBN, [torch.randn(5, 3, requires_grad=True)], "fx", calls=2)


@pytest.mark.parametrize("source", SOURCES)
def test_batchnorm_eval_is_left_alone(source):
    torch.manual_seed(4)
    make = lambda: BN(2).eval()
    run = check(make, [torch.randn(2, 3, 4, 4, requires_grad=True)], source)
    f = run.functionalized if source == "fx" else run.captured[0]
    assert not f.writebacks and not f.notes
    if source == "fx":
        assert not may_mutate(symbolic_trace(make()))


class BasicBlock(nn.Module):
    """torchvision's ResNet block: BatchNorm in training, ReLU(inplace=True), out += identity."""
    def __init__(self):
        super().__init__()
        self.conv1, self.conv2 = nn.Conv2d(4, 4, 3, padding=1), nn.Conv2d(4, 4, 3, padding=1)
        self.bn1, self.bn2, self.relu = nn.BatchNorm2d(4), nn.BatchNorm2d(4), nn.ReLU(inplace=True)

    def forward(self, x):
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        out += x
        return self.relu(out)


@pytest.mark.parametrize("source", SOURCES)
def test_resnet_block_trains_like_eager(source):
    torch.manual_seed(7)
    check(BasicBlock, [torch.randn(2, 4, 6, 6, requires_grad=True)], source, calls=2)
