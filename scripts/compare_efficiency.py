#!/usr/bin/env python
"""Side-by-side test-time efficiency of CLIP-RC, ZegCLIP and the CLIP-free students (docs/clip_rc.md).

Kept for the commands in docs/clip_rc.md: it is ``scripts/bench_infer.py`` (same flags) with CLIP-RC as the
reference and the four models of that comparison; see bench_infer.py for what is built and measured.

    python scripts/compare_efficiency.py                      # 512x512, VOC's 20 classes, auto device
    python scripts/compare_efficiency.py --device cuda --amp bf16 --reference clip_rc
    python scripts/compare_efficiency.py --no-measure         # params and GFLOPs only (fast on a CPU)
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_infer import main  # noqa: E402

if __name__ == "__main__":
    # defaults first: a flag given on the command line comes later and wins
    sys.exit(
        main(["--models", "clip_rc", "zegclip", "clip_zss", "chimera_seg", "--reference", "clip_rc", *sys.argv[1:]])
    )
