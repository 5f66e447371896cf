"""Which storages an ATen call writes, and whether autograd records the write.

A ``TorchDispatchMode`` (under the fake mode of ``ir.alias_analysis``) sees every ATen
op with its schema and records the arguments annotated as written (``Tensor(a!)``).
``aten::native_batch_norm`` updates its running stats with no ``!`` in its schema and
bumps no version counter (measured in PyTorch 2.13): those ops are listed by hand.
"""
from __future__ import annotations

import torch
import torch.utils._pytree as pytree
from torch.multiprocessing.reductions import StorageWeakRef
from torch.utils._python_dispatch import TorchDispatchMode

# ATen ops that write arguments their schema does not mark as written: {name: (positions, training position)}
_UNANNOTATED_WRITES = {"native_batch_norm": ((3, 4), 5), "cudnn_batch_norm": ((3, 4), 5),
                       "miopen_batch_norm": ((3, 4), 5)}


def storage_key(t: torch.Tensor) -> StorageWeakRef:
    return StorageWeakRef(t.untyped_storage())


class WriteRecorder(TorchDispatchMode):
    """Records the tensors each ATen call writes, per its schema."""

    def __init__(self):
        super().__init__()
        self.written: list[torch.Tensor] = []
        self.recorded: set = set()  # storages written at least once as autograd records it

    def clear(self):
        self.written.clear()
        self.recorded.clear()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        start = len(self.written)
        for i, name in _written_arguments(func):
            value = args[i] if i < len(args) else kwargs.get(name)
            self.written.extend(t for t in (value if isinstance(value, (list, tuple)) else (value,))
                                if isinstance(t, torch.Tensor))
        unannotated = _UNANNOTATED_WRITES.get(func._schema.name.split("::")[-1])
        if unannotated and len(args) > unannotated[1] and args[unannotated[1]]:
            self.written.extend(args[i] for i in unannotated[0] if args[i] is not None)
        # autograd records the write when grad mode is on (as the op's caller set it: a no_grad
        # inside a call shows here) and some operand requires grad; F.embedding's max_norm
        # renorm writes weight.detach() from integer indices: not recorded
        if torch.is_grad_enabled() and any(t.requires_grad for t in pytree.tree_leaves((args, kwargs))
                                           if isinstance(t, torch.Tensor)):
            self.recorded.update(storage_key(t) for t in self.written[start:])
        return func(*args, **kwargs)


_WRITTEN_ARGS: dict = {}


def _written_arguments(func) -> tuple:
    found = _WRITTEN_ARGS.get(func)
    if found is None:
        found = tuple((i, a.name) for i, a in enumerate(func._schema.arguments)
                      if a.alias_info is not None and a.alias_info.is_write)
        _WRITTEN_ARGS[func] = found
    return found
