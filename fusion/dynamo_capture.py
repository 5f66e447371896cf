"""Capture through Dynamo: what ``fusion.compile`` does when torch.fx cannot trace a model.

``CompiledModule`` (``fusion.api``) mixes this in. Calls then go through
``torch.compile(model, backend=...)`` whose backend makes each graph Dynamo captures a
``CompiledModule`` of its own (a region); a graph break that is not data-dependent runs
eagerly with a warning, a data-dependent one needs ``fallback="eager"``.
"""
from __future__ import annotations

import torch
import torch.fx as fx

from ir.capture import CaptureError


class DynamoCapture:
    """The Dynamo path of ``CompiledModule``: its methods use the module's capture state
    (``_orig``, ``_fallback``, ``_limit``, ``_numerics``, ``_regions``, ``_trace_error``,
    ``_dynamo``, ``_capture``, ``_eager_reason``) and its ``_warn_once``."""

    def _use_dynamo(self, fx_error: CaptureError, one_graph: bool | None = None) -> None:
        """From now on calls go through Dynamo, each graph it captures planned by a
        ``CompiledModule`` of its own. Without fallback='eager' the whole forward must be
        one graph (a graph break at data-dependent code is a CaptureError); with it, or
        ``one_graph=False``, breaks run eagerly."""
        self._trace_error = fx_error
        import torch._dynamo  # noqa: F401  (~2 s on first import: only on this path)
        one_graph = self._fallback == "error" if one_graph is None else one_graph
        self.__dict__["_dynamo"] = torch.compile(self._orig, backend=self._region, fullgraph=one_graph,
                                                 dynamic=False)
        self._capture = (f"Dynamo ({'one graph' if one_graph else 'graph breaks run eagerly'}): "
                         f"torch.fx could not capture it ({first_line(fx_error)})")
        if not one_graph:
            self._warn_once("dynamo-breaks", f"fusion: {first_line(fx_error)} Capturing "
                            f"{model_name(self._orig)} with Dynamo; what it cannot capture (graph breaks) "
                            "runs eagerly (fallback='eager').")

    def _region(self, gm: fx.GraphModule, example_inputs) -> torch.nn.Module:
        """Dynamo's backend for this module: one compiled region per captured graph."""
        region = type(self)(gm, fallback=self._fallback, recompile_limit=self._limit,
                                precision=self._numerics)
        self._regions.append(region)
        return region

    def _call_dynamo(self, args: tuple, kwargs: dict):
        from torch._dynamo import exc
        try:
            # Dynamo skips frames holding nn.LSTM/GRU unless asked: our lowering runs them (extern)
            with torch._dynamo.config.patch(allow_rnn=True):
                return self._dynamo(*args, **kwargs)
        except exc.Unsupported as e:  # a graph break, with one graph required
            if data_dependent(e):
                raise CaptureError(
                    f"fusion: cannot capture {model_name(self._orig)}: torch.fx cannot trace it "
                    f"({first_line(self._trace_error)}), and Dynamo stops at: {first_line(e)}. "
                    "Data-dependent control flow (if/while on tensor values) and Python values "
                    "computed from tensors need fallback='eager' (those parts then run eagerly).") from e
            # something else Dynamo will not put in a graph (a print, a backward hook): that
            # part runs eagerly, the graphs around it still fuse
            self._warn_once("dynamo-breaks", f"fusion: Dynamo breaks {model_name(self._orig)}'s graph at: "
                            f"{first_line(e)}; that part runs eagerly.")
            self._use_dynamo(self._trace_error, one_graph=False)
            return self._call_dynamo(args, kwargs)
        except exc.FailOnRecompileLimitHit as e:
            # a Python value forward changes at every call (a counter attribute): torch.compile
            # would run the frame eagerly from then on; so do we
            self._warn_once("dynamo-limit", f"fusion: {model_name(self._orig)} reaches Dynamo's recompile "
                            "limit (a Python value it reads changes at every call); running it eagerly.")
            self._eager_reason = first_line(e)
            self.__dict__["_dynamo"] = None
            return self._orig(*args, **kwargs)
        except exc.TorchDynamoException as e:
            # the user's own error (eager raises it too, with its own type), or Dynamo's
            out = self._orig(*args, **kwargs)
            if self._fallback == "error":
                raise CaptureError(f"fusion: Dynamo could not capture {model_name(self._orig)}: "
                                   f"{first_line(e)}") from e
            self._warn_once("dynamo", f"fusion: Dynamo could not capture {model_name(self._orig)} "
                            f"({first_line(e)}); running it eagerly (fallback='eager').")
            return out


_DATA_DEPENDENT = ("data-dependent", "data dependent", "generic_jump", "item()", "tolist",
                   "unbacked", "dynamic shape operator", "nonzero")


def data_dependent(error: Exception) -> bool:
    """Whether Dynamo stopped at control flow or Python computed from tensor values."""
    text = str(error).lower()
    return any(word in text for word in _DATA_DEPENDENT)


def model_name(model) -> str:
    return getattr(model, "__name__", type(model).__name__)


def first_line(e: Exception) -> str:
    text = str(e).strip().splitlines()
    return text[0] if text else type(e).__name__
