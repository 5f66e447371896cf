"""Call signatures: binding a call to the forward's parameters, and what of it keys a plan.

A plan is valid for one signature: each argument's type (tensors: shape,
strides, dtype, device, requires_grad; Python values: their value; containers
walked, their tensors being inputs too; other objects: their identity), plus
the training mode, grad mode and default dtype.
"""
from __future__ import annotations

import inspect

import torch
import torch.autograd.forward_ad as forward_ad
import torch.utils._pytree as pytree


class Binder:
    """Binds ``(*args, **kwargs)`` to a forward's parameters, defaults applied."""

    def __init__(self, fn, owner):
        self.owner = owner
        try:
            self.signature = inspect.signature(fn)
        except (TypeError, ValueError):  # builtins: no signature, positional calls only
            self.signature = None
        # calls passing exactly the positional parameters need no binding (the hot path)
        self.n_positional = -1 if self.signature is None or any(
            p.kind not in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
            for p in self.signature.parameters.values()) else len(self.signature.parameters)

    @property
    def names(self) -> list[str]:
        return list(self.signature.parameters) if self.signature is not None else []

    def bind(self, args: tuple, kwargs: dict) -> tuple:
        if self.signature is None or (not kwargs and len(args) == self.n_positional):
            return args
        try:
            bound = self.signature.bind(*args, **kwargs)
        except TypeError as e:
            raise TypeError(f"fusion: calling {self.owner!r}: {e}") from None
        bound.apply_defaults()
        return tuple(bound.args) + tuple(bound.kwargs.values())


def signature_key(training: bool, args: tuple) -> tuple:
    """The key of a bound call: training mode, grad mode (functionalization reads it),
    default dtype, then each argument."""
    key = [training, torch.is_grad_enabled(), torch.get_default_dtype()]
    for a in args:
        key.append(describe_arg(a))
    return tuple(key)


def describe_arg(a):
    """What a call's argument contributes to the key. Containers are walked (their
    tensors are graph inputs); other objects are guarded by identity, held by the key
    so that a new object can never reuse an old one's id."""
    if isinstance(a, torch.Tensor):
        return ("tensor", a.shape, a.stride(), a.dtype, a.device, a.requires_grad)
    if isinstance(a, (bool, int, float, str, type(None), torch.dtype, torch.device)):
        return (type(a).__name__, a)
    if isinstance(a, (list, tuple, dict)):
        leaves, spec = pytree.tree_flatten(a)
        return (str(spec), tuple(describe_arg(v) for v in leaves))
    return ("object", _Identity(a))


class _Identity:
    """Equal only to the same object; keeps it alive while a plan keyed on it exists."""

    def __init__(self, obj):
        self.obj = obj

    def __eq__(self, other):
        return isinstance(other, _Identity) and other.obj is self.obj

    def __hash__(self):
        return id(self.obj)


def tensor_leaves(args) -> list:
    """The tensor leaves of the arguments, in the order capture made them inputs."""
    return [t for t in pytree.tree_leaves(list(args)) if isinstance(t, torch.Tensor)]


def transformed(args) -> str | None:
    """Why these arguments must run eagerly, or None: a functorch wrapper (vmap's
    BatchedTensor, grad's tracking tensor: kernels cannot read its storage), a tensor
    subclass (its methods would not run, its type would be lost), a meta tensor, or dual
    tensors of forward-mode AD (kernels carry no tangents)."""
    is_wrapped = torch._C._functorch.is_functorch_wrapped_tensor
    tensors = tensor_leaves(args)
    for t in tensors:
        if is_wrapped(t):
            return "calls inside torch.func transforms (vmap, grad, jacrev)"
        if type(t) not in (torch.Tensor, torch.nn.Parameter):
            return f"tensor subclasses ({type(t).__name__})"
    if tensors and all(t.is_meta for t in tensors):  # mixed with real devices: capture refuses it
        return "calls on meta tensors (no data for kernels to read)"
    if forward_ad._current_level >= 0:
        return "calls under forward-mode AD (torch.autograd.forward_ad)"
    return None
