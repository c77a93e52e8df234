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

                host = subprocess.run(["scontrol", "show", "hostnames", nodes], capture_output=True, text=True,
                                      timeout=30).stdout.split()[0]
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
        RuntimeError: ``device=cuda`` without a CUDA device.
    """
    _slurm_env()
    world = int(os.environ.get("WORLD_SIZE", "1"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda":
        if not torch.cuda.is_available():
            raise RuntimeError("trainer.device=cuda but no CUDA device is visible; use trainer.device=cpu")
        torch.cuda.set_device(local_rank)
        dev = torch.device("cuda", local_rank)
    else:
        dev = torch.device(device)
    if world > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if dev.type == "cuda" else "gloo")
    return dev


def is_dist() -> bool:
    return dist.is_available() and dist.is_initialized()


def get_rank() -> int:
    return dist.get_rank() if is_dist() else 0


def get_world_size() -> int:
    return dist.get_world_size() if is_dist() else 1


def is_main() -> bool:
    return get_rank() == 0


def barrier() -> None:
    if is_dist():
        dist.barrier()


def all_gather_nograd(x: torch.Tensor) -> torch.Tensor:
    """Concatenate ``x`` (``Tensor[N, ...]``, same N on every rank) from all ranks along dim 0.

    The result carries no gradient (use it for negatives from a frozen teacher). Returns ``x``
    itself in a single process.
    """
    if not is_dist():
        return x
    out = [torch.empty_like(x) for _ in range(get_world_size())]
    dist.all_gather(out, x.detach().contiguous())
    return torch.cat(out, dim=0)


def cleanup() -> None:
    if is_dist():
        dist.destroy_process_group()
