"""The IR: a typed graph (``ir.graph``), the op table (``ir.ops``), reverse mode
(``ir.autodiff``) and capture from torch.fx (``ir.capture``, ``ir.lower``).

Importing the package fills the op table, so any holder of a ``Graph`` can
type new nodes (``Graph.call``) and verify them.
"""
import ir.ops  # noqa: F401
