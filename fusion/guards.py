"""The per-plan guards: the submodules, parameters and buffers a plan was built with.

A plan is valid while every module on the path to what it reads is the same
object (``parent._modules[name] is child``: dict lookups, no ``nn.Module.__getattr__``
chain), each submodule it resolved is in the same train/eval mode, and each
parameter or buffer it reads still has the type it was built for. Values are
fetched at every call, so weights are never stale.
"""
from __future__ import annotations

import torch


def tensor_type(t) -> tuple:
    """What a plan assumes of a parameter or buffer (strides do not matter: kernels
    read any layout through strides)."""
    if isinstance(t, torch.Tensor):
        return (t.shape, t.dtype, t.device, t.requires_grad)
    return ("value", type(t), id(t))


def _path(root, qualname: str) -> tuple[list, object, str]:
    """The (parent, name, child) links to the module owning ``qualname``, the owner,
    and the attribute's own name."""
    *mods, attr = qualname.split(".") if qualname else ("",)
    links, obj = [], root
    for name in mods:
        child = obj._modules[name]
        links.append((obj, name, child))
        obj = child
    return links, obj, attr


def _read(owner, attr):
    for table in ("_parameters", "_buffers", "_modules"):
        d = getattr(owner, table, None)
        if d is not None and attr in d:
            return d[attr]
    return getattr(owner, attr)


class PlanGuards:
    """Build once per plan with the root module, then ``params(root)`` per call."""

    def __init__(self, root, modules: dict, param_names: list[str]):
        self.root = root
        self.modules = []   # (links, module, its training flag)
        for qualname, (mod, training) in (modules or {}).items():
            links, owner, attr = _path(root, qualname)
            self.modules.append((links + [(owner, attr, mod)], training))
        self.params = []    # (name, links, owner, attr, type built for)
        for name in param_names:
            links, owner, attr = _path(root, name)
            self.params.append((name, links, owner, attr, tensor_type(_read(owner, attr))))

    def values(self) -> dict | None:
        """The parameters and buffers the plan reads, or None when a guard fails."""
        for links, training in self.modules:
            if not _same(links) or links[-1][2].training != training:
                return None
        out = {}
        for name, links, owner, attr, built_for in self.params:
            if not _same(links):
                return None
            value = _read(owner, attr)
            if tensor_type(value) != built_for:
                return None
            out[name] = value
        return out


def _same(links) -> bool:
    return all(parent._modules.get(name) is child for parent, name, child in links)
