"""Neutral helpers every layer may import (they import nothing else from zss).

- :mod:`zss.utils.bank`: the FIFO bank of past vectors (contrastive negatives: CLS tokens, pseudo weights).
- :mod:`zss.utils.dist`: torchrun process groups and the one all-gather helper (DDP).
- :mod:`zss.utils.progress`: tqdm progress bars and logging routed through them.
"""
