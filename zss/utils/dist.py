"""One code path for 1 process and ``torchrun --nproc_per_node N``.

The process group is set up from the environment that torchrun writes (``RANK``,
``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``, ``MASTER_PORT``); without it everything is a
no-op and the world is one process.
"""

from __future__ import annotations

import os

import torch
import torch.distributed as dist


def _slurm_env() -> None:
    """Under SLURM (srun / Hydra's submitit launcher) without torchrun, derive torchrun's variables
    from SLURM's: RANK = SLURM_PROCID, WORLD_SIZE = SLURM_NTASKS, LOCAL_RANK = SLURM_LOCALID,
    MASTER_ADDR = first host of the job (``scontrol show hostnames``), MASTER_PORT = 20000 + job id % 20000."""
    if "WORLD_SIZE" in os.environ or int(os.environ.get("SLURM_NTASKS", "1")) <= 1:
        return
    os.environ.setdefault("RANK", os.environ["SLURM_PROCID"])
    os.environ.setdefault("WORLD_SIZE", os.environ["SLURM_NTASKS"])
    os.environ.setdefault("LOCAL_RANK", os.environ.get("SLURM_LOCALID", "0"))
    if "MASTER_ADDR" not in os.environ:
        host = "127.0.0.1"
        nodes = os.environ.get("SLURM_JOB_NODELIST")
        if nodes:
            try:
                import subprocess

                host = subprocess.run(
                    ["scontrol", "show", "hostnames", nodes], capture_output=True, text=True, timeout=30
                ).stdout.split()[0]
            except (OSError, IndexError, subprocess.SubprocessError):
                pass
        os.environ["MASTER_ADDR"] = host
    os.environ.setdefault("MASTER_PORT", str(20000 + int(os.environ.get("SLURM_JOB_ID", "0")) % 20000))


def init_distributed(device: str = "auto") -> torch.device:
    """Initialise the process group when launched by torchrun (or SLURM tasks); pick this rank's device.

    Args:
        device: ``auto`` (CUDA ``LOCAL_RANK`` if available, else CPU), ``cpu`` or ``cuda``.

    Returns:
        The ``torch.device`` this rank runs on. Backend: NCCL on CUDA, gloo on CPU.

    Raises:
        ValueError: ``device`` is not ``auto``/``cpu``/``cuda`` nor a torch device string; ``device=cuda`` without a
            CUDA device (both name the top-level ``device=`` key of the command).
    """
    _slurm_env()
    world = int(os.environ.get("WORLD_SIZE", "1"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device not in ("auto", "cpu", "cuda"):
        try:
            torch.device(device)
        except (RuntimeError, TypeError):
            raise ValueError(
                f"device={device!r} is not a device: use device=auto, device=cpu or device=cuda "
                f"(torchrun/SLURM pick the GPU of each rank from LOCAL_RANK)"
            ) from None
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(
                "device=cuda but no CUDA device is visible: use device=cpu (or device=auto, which "
                "picks CUDA when there is one)"
            )
        torch.cuda.set_device(local_rank)
        dev = torch.device("cuda", local_rank)
    else:
        dev = torch.device(device)
    if world > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if dev.type == "cuda" else "gloo")
    return dev


def is_dist() -> bool:
    """True when a torch.distributed process group is initialised (under torchrun)."""
    return dist.is_available() and dist.is_initialized()


def get_rank() -> int:
    """This process's rank (0 without a process group)."""
    return dist.get_rank() if is_dist() else 0


def get_world_size() -> int:
    """Number of processes in the group (1 without a process group)."""
    return dist.get_world_size() if is_dist() else 1


def is_main() -> bool:
    """True on rank 0, the process that logs, writes checkpoints and reports."""
    return get_rank() == 0


def barrier() -> None:
    """Wait for every rank (a no-op without a process group)."""
    if is_dist():
        dist.barrier()


def all_gather_cat(x: torch.Tensor) -> tuple[torch.Tensor, int]:
    """All-gather ``x`` (``Tensor[N, ...]``, the same N and dtype on every rank) and concatenate along dim 0.

    The one all-gather of zss (InfoNCE in-batch negatives and the CLS bank of CLIP-ZSS / Chimera-Seg).

    Returns:
        ``(Tensor[world·N, ...], offset)``: rows ``offset:offset+N`` are this rank's ``x`` itself, so its
        autograd graph is kept; the other ranks' rows carry no gradient (fine for positives / negatives from
        the frozen teacher). Without a process group, or with a world of 1: ``(x, 0)``.
    """
    if not is_dist() or get_world_size() == 1:
        return x, 0
    world, rank = get_world_size(), get_rank()
    parts = [torch.empty_like(x) for _ in range(world)]
    dist.all_gather(parts, x.detach().contiguous())
    parts[rank] = x
    return torch.cat(parts, dim=0), rank * x.shape[0]


def cleanup() -> None:
    """Destroy the process group, if any (end of a torchrun job)."""
    if is_dist():
        dist.destroy_process_group()
