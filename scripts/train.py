#!/usr/bin/env python
"""Train a zss method: ``python scripts/train.py experiment=demo [key=value ...]`` (Hydra overrides).

Multi-GPU: ``torchrun --nproc_per_node N scripts/train.py experiment=...``.
"""

from zss.cli.train import train_main

if __name__ == "__main__":
    train_main()
