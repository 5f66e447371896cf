"""The graph passes, in the order they run. Each is a pure ``Graph -> Graph``."""
from ir.autodiff import eliminate_dead_code

PASSES = [
    eliminate_dead_code,
]
