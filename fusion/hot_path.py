"""The hot path: one generated function per call signature that checks its guards and runs it.

The general path of ``CompiledModule`` binds the call, builds its signature key
(a tuple per argument), looks the entry up, walks its guards and flattens the
arguments: ~20 us of Python per call. Once a signature has run, ``make_hot``
writes a function for it that does the same checks straight-line (as torch.fx's
codegen writes ``gm.code``, and Dynamo its guards): the tensors' shapes,
strides, dtypes, devices and requires_grad through one C++ ``TensorGuards``
check (Dynamo's own), the module links and training flags, the parameters read
by dict lookups, the Python values capture baked in, grad/autocast/functorch
modes; then the plan's runner. Any failed check returns ``MISS`` and the
general path decides (recapture, another signature, eager).

A signature gets a hot path when it is called positionally with tensors and
plain Python values only, and writes nothing back (functionalized graphs keep
the general path, which also checks aliasing between inputs).
"""
from __future__ import annotations

import itertools
import linecache

import torch
import torch.autograd.forward_ad as forward_ad
import torch.nn.modules.module as module_globals
import torch.utils._pytree as pytree

from fusion.runtime import runner_for
from ir.graph import Node

MISS = object()
_IDS = itertools.count()
_PLAIN = (bool, int, float, str, type(None), torch.dtype, torch.device)

try:  # Dynamo's C++ tensor check: sizes, strides, dtype, device, requires_grad, dispatch keys
    from torch._C._dynamo.guards import TensorGuards
except ImportError:  # pragma: no cover - an older torch: the Python comparisons below serve
    TensorGuards = None


def hooks_set(module) -> bool:
    """Hooks nn.Module.__call__ would run: the hot path must not skip them."""
    return bool(module._forward_hooks or module._forward_pre_hooks
                or module_globals._global_forward_hooks or module_globals._global_forward_pre_hooks
                or module_globals._global_backward_hooks or module_globals._global_backward_pre_hooks)


def make_hot(compiled, entry, args: tuple, given: int):
    """The hot function of ``entry`` for calls passing the first ``given`` of ``args``
    (the bound arguments) positionally, the rest being defaults; None when the signature
    does not qualify."""
    if entry.functional is not None or not all(isinstance(a, torch.Tensor) or type(a) in _PLAIN
                                               for a in args):
        return None
    scope = {"MISS": MISS, "run": runner_for(entry.plan),
             "grad_enabled": torch.is_grad_enabled, "default_dtype": torch.get_default_dtype,
             "autocast_on": torch._C._is_any_autocast_enabled,
             "transforms_on": torch._C._are_functorch_transforms_active,
             "dtype": torch.get_default_dtype(), "owner": vars(compiled), "root": compiled.original,
             "forward_ad": forward_ad, "Tensor": torch.Tensor, "Parameter": torch.nn.Parameter}
    names = [f"a{k}" for k in range(len(args))]
    lines = ["def hot(args):", f"    if len(args) != {given}:", "        return MISS",
             f"    {', '.join(names[:given])}, = args" if given else "    pass"]
    for k in range(given, len(args)):  # defaults: the values bound last time, fixed
        scope[f"default{k}"] = args[k]
        lines.append(f"    a{k} = default{k}")
    # a module's mode is its own; a function's is the compiled module's (set by .train()/.eval())
    training = ("root.training" if isinstance(compiled.original, torch.nn.Module)
                else "owner.get('_training', True)")
    lines += [f"    if (grad_enabled() is not {torch.is_grad_enabled()} or default_dtype() is not dtype"
              f" or {training} is not {compiled.training} or autocast_on()"
              " or transforms_on() or forward_ad._current_level >= 0):", "        return MISS"]
    tensors = [n for n, a in zip(names, args) if isinstance(a, torch.Tensor)]
    for n, a in zip(names[:given], args):  # plain tensors only: a subclass runs eagerly
        if isinstance(a, torch.Tensor):
            lines += [f"    if {n}.__class__ is not {type(a).__name__}:", "        return MISS"]
    for k, (n, a) in enumerate(zip(names[:given], args)):
        if not isinstance(a, torch.Tensor):
            scope[f"arg{k}"] = a
            lines += [f"    if {n} is not arg{k} and not (type({n}) is type(arg{k}) and {n} == arg{k}):",
                      "        return MISS"]
    lines += _module_guards(entry.guards, scope)
    params = _param_reads(entry.guards, scope, lines)
    if params is None:
        return None
    for k, read in enumerate(entry.state.reads):
        scope[f"read{k}"] = read
        lines += [f"    if not read{k}.holds():", "        return MISS"]
    checked = tensors + [local for local, _, _ in params]
    if TensorGuards is not None and checked:
        examples = [a for a in args if isinstance(a, torch.Tensor)] + [value for _, _, value in params]
        scope["tensor_guards"] = TensorGuards(
            *examples, dynamic_dims_sizes=[list(t.shape) for t in examples],
            dynamic_dims_strides=[list(t.stride()) for t in examples])
        lines += [f"    if not tensor_guards.check({', '.join(checked)}):", "        return MISS"]
    elif checked:
        return None
    call_inputs = ", ".join(tensors)
    param_dict = ", ".join(f"{name!r}: {local}" for local, name, _ in params)
    lines.append(f"    outs = run([{call_inputs}], {{{param_dict}}})")
    lines += _outputs(entry.captured, scope)
    source = "\n".join(lines) + "\n"
    filename = f"<fusion hot path {next(_IDS)}>"
    linecache.cache[filename] = (len(source), None, source.splitlines(True), filename)
    exec(compile(source, filename, "exec"), scope)
    hot = scope["hot"]
    hot.source = source
    return hot


def _module_guards(guards, scope: dict) -> list[str]:
    """The modules the plan was built with: same objects at the same places, same mode."""
    lines = []
    for k, (links, training) in enumerate(guards.modules):
        for j, (parent, name, child) in enumerate(links):
            scope[f"mod{k}_{j}"], scope[f"sub{k}_{j}"] = parent._modules, child
            lines += [f"    if mod{k}_{j}.get({name!r}) is not sub{k}_{j}:", "        return MISS"]
        lines += [f"    if sub{k}_{len(links) - 1}.training is not {training}:", "        return MISS"]
    return lines


def _param_reads(guards, scope: dict, lines: list) -> list | None:
    """Read each parameter from the dict that holds it: [(local, name, value now)], or None
    when one is read some other way (getattr: the general path serves it)."""
    out = []
    for k, (name, links, owner, attr, _) in enumerate(guards.params):
        for j, (parent, link, child) in enumerate(links):
            scope[f"pmod{k}_{j}"], scope[f"psub{k}_{j}"] = parent._modules, child
            lines += [f"    if pmod{k}_{j}.get({link!r}) is not psub{k}_{j}:", "        return MISS"]
        table = next((getattr(owner, t) for t in ("_parameters", "_buffers")
                      if attr in (getattr(owner, t, None) or {})), None)
        if table is None:
            return None
        scope[f"table{k}"] = table
        lines += [f"    p{k} = table{k}.get({attr!r})", f"    if p{k} is None:", "        return MISS"]
        out.append((f"p{k}", name, table[attr]))
    return out


def _outputs(captured, scope: dict) -> list[str]:
    """Rebuild the output structure from the plan's outputs (a single tensor: itself)."""
    leaves = captured.out_leaves
    if len(leaves) == 1 and isinstance(leaves[0], Node) and captured.out_spec.is_leaf():
        return ["    return outs[0]"]
    scope.update(spec=captured.out_spec, unflatten=pytree.tree_unflatten)
    parts = []
    k = 0
    for j, leaf in enumerate(leaves):
        if isinstance(leaf, Node):
            parts.append(f"outs[{k}]")
            k += 1
        else:
            scope[f"leaf{j}"] = leaf
            parts.append(f"leaf{j}")
    return [f"    return unflatten([{', '.join(parts)}], spec)"]
