"""Count the host synchronisations a piece of code would make on a GPU, on any device (CPU included).

A *host sync* is a point where Python waits for the accelerator: reading a value back (``.item()``,
``bool(t)``, ``int(t)``, ``float(t)``, ``.tolist()``, ``.cpu()``, ``.numpy()``), an op whose output size
depends on the data (``nonzero``, boolean-mask indexing, ``masked_select``, ``unique``, ``bincount``,
``repeat_interleave`` without ``output_size``), ``torch.equal``, or a blocking host-to-device copy of a
Python value (``torch.tensor(x, device=...)``). On CUDA, ``torch.cuda.set_sync_debug_mode("error")`` finds
them; on a CPU nothing waits, so :class:`HostSyncCounter` finds the same call sites by inspection:

* a :class:`torch.utils._python_dispatch.TorchDispatchMode` sees every aten op and counts the ones above
  (``aten._local_scalar_dense`` is what ``.item()`` / ``bool()`` / ``int()`` / ``float()`` reach);
* ``torch.Tensor.tolist`` / ``.cpu`` / ``.numpy`` are wrapped while the counter is active, because on a
  CPU tensor they read memory without dispatching an op; calls from the data pipeline (``zss/data``: CPU
  tensors by construction, e.g. the training-label leak guard) are not counted.

Not seen on a CPU: ``.to(device)`` calls whose target happens to be the CPU (a device-to-host copy on a
GPU), and syncs inside C++ kernels that have no CPU counterpart. The CUDA test
(tests/test_sync_free.py) covers those with ``torch.cuda.set_sync_debug_mode("error")``.

Source: ours (a test and benchmark tool; the op list follows PyTorch's CUDA sync points).
"""

from __future__ import annotations

import traceback
from collections import Counter
from pathlib import Path

import torch
from torch.utils._python_dispatch import TorchDispatchMode

__all__ = ["HostSyncCounter", "SYNC_OPS"]

_aten = torch.ops.aten
#: aten ops that synchronise with the host on CUDA, whatever their arguments (name -> reason).
SYNC_OPS: dict = {
    _aten._local_scalar_dense.default: "item/bool/int/float",
    _aten.nonzero.default: "nonzero",
    _aten.masked_select.default: "masked_select",
    _aten.equal.default: "torch.equal",
    _aten._unique2.default: "unique",
    _aten.unique_dim.default: "unique",
    _aten.unique_consecutive.default: "unique",
    _aten.bincount.default: "bincount",
    _aten.repeat_interleave.Tensor: "repeat_interleave",
    _aten.lift_fresh.default: "torch.tensor(data) (blocking host-to-device copy on a GPU)",
}
_INDEX_OPS = {_aten.index.Tensor, _aten.index_put.default, _aten.index_put_.default, _aten._index_put_impl_.default}
_ZSS = str(Path(__file__).resolve().parents[1])


def _bool_index(args) -> bool:
    idx = args[1] if len(args) > 1 else None
    return isinstance(idx, (list, tuple)) and any(
        isinstance(i, torch.Tensor) and i.dtype in (torch.bool, torch.uint8) for i in idx
    )


def _where() -> str:
    """Innermost zss frame of the current stack as ``path:line (function)`` (or the innermost frame)."""
    frames = [f for f in traceback.extract_stack()[:-3] if not f.filename.endswith("syncs.py")]
    own = [f for f in frames if f.filename.startswith(_ZSS)]
    f = (own or frames)[-1]
    return f"{Path(f.filename).name}:{f.lineno} ({f.name})"


_DATA = str(Path(_ZSS) / "data")


def _in_data_pipeline() -> bool:
    """True when the innermost zss frame is data-pipeline code (``zss/data``): it handles CPU tensors by
    construction (normally in the loader's workers), so its ``.cpu`` / ``.numpy`` / ``.tolist`` are no device syncs."""
    own = [
        f for f in traceback.extract_stack()[:-2] if f.filename.startswith(_ZSS) and not f.filename.endswith("syncs.py")
    ]
    return bool(own) and own[-1].filename.startswith(_DATA)


class HostSyncCounter(TorchDispatchMode):
    """Context manager counting host syncs (see the module docstring) inside its ``with`` block.

    Attributes (after or during the block):
        total (int): number of sync points hit.
        by_kind (Counter[str]): count per kind (``"item/bool/int/float"``, ``"nonzero"``, ``"tolist"`` ...).
        sites (Counter[str]): count per call site ``file.py:line (function)`` (innermost zss frame).

    Example::

        with HostSyncCounter() as syncs:
            out = method.training_step(batch)
        assert syncs.total == 0, syncs.sites
    """

    def __init__(self) -> None:
        super().__init__()
        self.by_kind: Counter = Counter()
        self.sites: Counter = Counter()
        self._saved: dict = {}

    @property
    def total(self) -> int:
        return int(sum(self.by_kind.values()))

    def _hit(self, kind: str) -> None:
        self.by_kind[kind] += 1
        self.sites[f"{_where()}: {kind}"] += 1

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kind = SYNC_OPS.get(func)
        if kind is None and func in _INDEX_OPS and _bool_index(args):
            kind = "boolean-mask indexing"
        if kind is not None:
            self._hit(kind)
        return func(*args, **(kwargs or {}))

    def __enter__(self):
        counter = self
        for name in ("tolist", "cpu", "numpy"):
            orig = getattr(torch.Tensor, name)
            self._saved[name] = orig

            def wrapped(t, *a, _orig=orig, _name=name, **k):
                if not _in_data_pipeline():
                    counter._hit(_name)
                return _orig(t, *a, **k)

            setattr(torch.Tensor, name, wrapped)
        return super().__enter__()

    def __exit__(self, *exc):
        try:
            return super().__exit__(*exc)
        finally:
            for name, orig in self._saved.items():
                setattr(torch.Tensor, name, orig)
            self._saved.clear()

    def report(self, limit: int = 20) -> str:
        """One line per call site (most frequent first), for messages."""
        return "\n".join(f"{n} x {site}" for site, n in self.sites.most_common(limit)) or "no host syncs"
