"""A fixed-size first-in-first-out bank of past row vectors, the extra negatives of a contrastive loss.

CLIP-ZSS's GLM and Chimera-Seg's SGD keep the teacher's past CLS tokens (:class:`zss.methods.losses.CLSBank`),
CLIP-ZSS's cross-image pseudo negatives keep past pseudo-region weights (:class:`zss.methods.clip_zss.PseudoBank`):
both are this bank with their own names. Not trained; the buffers are non-persistent (inference never needs
them, ``state_dict`` does not carry them) and the trainer saves the bank with the training state instead
(:meth:`FifoBank.train_state` / :meth:`FifoBank.load_train_state`), so a resumed run continues with the same
negatives. No method here reads a device value back to the host (no GPU sync in a training step), except
:meth:`FifoBank.stored` / ``len()`` once after a push with a presence mask. Under DDP every rank keeps its own
bank. Source: ours (the banks' sizes are method settings, documented there).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

__all__ = ["FifoBank"]


class FifoBank(nn.Module):
    """FIFO ring of N rows of width D (float32) with a validity mask; the newest rows overwrite the oldest.

    Buffers: ``rows`` ``Tensor[N + 1, D] float32`` (slot N is a write sink for absent rows, never valid),
    ``valid`` ``Tensor[N + 1] bool``, ``ptr`` (next slot) and ``count`` (filled slots) ``Tensor[] int64``.
    Slots fill contiguously from ``ptr``, so the ``count`` slots before ``ptr`` (cyclically) are the stored rows.

    Args:
        size: capacity N (rows); 0 = an always-empty bank.
        dim: row width D.
        name: what error messages call the bank (``"CLSBank"``).
        size_key: the setting that chose ``size``, named when a saved bank does not fit (``"bank_size"``).
        state_key: name of the rows in :meth:`train_state` (``"tokens"``, ``"weights"``: the names older
            checkpoints use).

    Raises:
        ValueError: ``size < 0`` or ``dim < 1``.
    """

    def __init__(
        self, size: int, dim: int, *, name: str = "FifoBank", size_key: str = "size", state_key: str = "rows"
    ) -> None:
        super().__init__()
        if int(size) < 0 or int(dim) < 1:
            raise ValueError(f"{name}: size must be >= 0 and dim >= 1, got size={size}, dim={dim}")
        self.size, self.dim = int(size), int(dim)
        self.name, self.size_key, self.state_key = name, size_key, state_key
        self.register_buffer("rows", torch.zeros(self.size + 1, self.dim), persistent=False)
        self.register_buffer("valid", torch.zeros(self.size + 1, dtype=torch.bool), persistent=False)
        self.register_buffer("ptr", torch.zeros((), dtype=torch.long), persistent=False)
        self.register_buffer("count", torch.zeros((), dtype=torch.long), persistent=False)
        # host copies of ptr / count: they follow from the pushed row counts alone while no push has a presence
        # mask (None after one: read back once, on demand), so len() and stored() read no device value
        self._host: tuple[int, int] | None = (0, 0)

    @torch.no_grad()
    def push(self, rows: Tensor, present: Tensor | None = None) -> None:
        """Append ``rows`` ``Tensor[..., D]`` (detached, stored as float32), in row-major order.

        Without ``present`` every row is appended; more than N rows in one push keep the last N. With ``present``
        (``Tensor[...] bool``, the shape of ``rows`` without D) only the present rows are appended, at most the
        first N of them, and with no host sync (absent rows go to the sink slot).

        Raises:
            ValueError: the last dimension of ``rows`` is not D, or ``present`` does not match ``rows``.
        """
        if rows.dim() < 1 or rows.shape[-1] != self.dim:
            raise ValueError(
                f"{self.name}.push expects [N, {self.dim}] (or [..., {self.dim}]), got {tuple(rows.shape)}"
            )
        if present is not None and tuple(present.shape) != tuple(rows.shape[:-1]):
            raise ValueError(
                f"{self.name}.push: present {tuple(present.shape)} does not match rows {tuple(rows.shape)}"
            )
        n = self.size
        x = rows.detach().reshape(-1, self.dim).to(self.rows.device, torch.float32)
        if n == 0 or x.shape[0] == 0:
            return
        if present is None:
            x = x[-n:]
            m = x.shape[0]
            idx = (self.ptr + torch.arange(m, device=self.rows.device)) % n
            self.rows[idx] = x
            self.valid.index_fill_(0, idx, True)
            self.ptr.copy_((self.ptr + m) % n)
            self.count.copy_(torch.clamp(self.count + m, max=n))
            if self._host is not None:
                self._host = ((self._host[0] + m) % n, min(self._host[1] + m, n))
            return
        ok = present.reshape(-1).to(self.rows.device).bool()
        order = torch.argsort((~ok).to(torch.uint8), stable=True)[:n]  # present rows first, at most N
        x, ok = x[order], ok[order]
        pos = torch.where(ok, (self.ptr + ok.long().cumsum(0) - 1) % n, n)
        self.rows.index_copy_(0, pos, x)
        self.valid.index_copy_(0, pos, ok)
        self.valid[n:].zero_()  # the sink slot never holds a row
        added = ok.long().sum()
        self.ptr.copy_((self.ptr + added) % n)
        self.count.copy_(torch.clamp(self.count + added, max=n))
        self._host = None

    def slots(self) -> tuple[Tensor, Tensor]:
        """``(Tensor[N, D] float32, Tensor[N] bool)``: every slot and which ones hold a row (views, fixed shape,
        no host sync)."""
        return self.rows[: self.size], self.valid[: self.size]

    def _host_counts(self) -> tuple[int, int]:
        if self._host is None:  # after a push with a presence mask: read back once
            self._host = (int(self.ptr), int(self.count))
        return self._host

    def __len__(self) -> int:
        """Stored rows, ``min(pushed, N)``."""
        return self._host_counts()[1]

    def stored(self) -> Tensor:
        """The stored rows, oldest first: ``Tensor[n, D] float32``, ``n = len(self)`` (a copy)."""
        ptr, n = self._host_counts()
        if n < self.size:
            return self.rows[:n].clone()
        return torch.roll(self.rows[: self.size], shifts=-ptr, dims=0).clone()

    def reset(self) -> None:
        """Empty the bank."""
        self.ptr.zero_()
        self.count.zero_()
        self.valid.zero_()
        self._host = (0, 0)

    def train_state(self) -> dict[str, Tensor]:
        """The bank for a training checkpoint (CPU copies): ``{state_key: Tensor[N, D] float32, "valid":
        Tensor[N] bool, "ptr": Tensor[] int64, "count": Tensor[] int64}``."""
        rows, valid = self.slots()
        return {
            self.state_key: rows.detach().cpu().clone(),
            "valid": valid.cpu().clone(),
            "ptr": self.ptr.cpu().clone(),
            "count": self.count.cpu().clone(),
        }

    def load_train_state(self, state: dict[str, Tensor]) -> None:
        """Restore :meth:`train_state`; also reads the layouts older zss wrote: the CLS bank's (``tokens``
        ``[N, D]``, ``ptr``, ``count``: slots ``< count`` hold a row) and the pseudo bank's (``weights``
        ``[N + 1, D]`` and ``valid`` ``[N + 1]`` with the sink slot, ``ptr``).

        Raises:
            ValueError: the saved bank has another size or width (names ``size_key``: resume with the value the
                run was trained with).
        """
        rows = state[self.state_key]
        old_sink = "count" not in state and "valid" in state  # the pseudo bank's older layout carries the sink
        want = (self.size + (1 if old_sink else 0), self.dim)
        if tuple(rows.shape) != want:
            saved = (rows.shape[0] - (1 if old_sink else 0), *rows.shape[1:])
            raise ValueError(
                f"{self.name}: the checkpoint's bank is {tuple(saved)}, this one {(self.size, self.dim)} "
                f"(size, D): resume with the {self.size_key} it was trained with"
            )
        n = self.size
        if "valid" in state:
            valid = state["valid"][:n].bool()
        else:
            valid = torch.arange(n) < int(state["count"])
        count = state["count"] if "count" in state else valid.long().sum()
        self.rows[:n].copy_(rows[:n])
        self.valid.zero_()
        self.valid[:n].copy_(valid)
        self.ptr.copy_(state["ptr"])
        self.count.copy_(count)
        self._host = (int(state["ptr"]), int(count))

    def extra_repr(self) -> str:
        return f"size={self.size}, dim={self.dim}"
