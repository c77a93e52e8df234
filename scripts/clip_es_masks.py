#!/usr/bin/env python
"""CLIP-ES pseudo masks for a split: ``python scripts/clip_es_masks.py [key=value ...]`` (docs/clip_es.md).

Writes ``<out_dir>/<id>.png`` (palette PNG, class ids, 255 = ignore) into a NEW folder and reports the
CAM / +CAA / +CRF mIoU against the ground truth and img/s. Keys: configs/clip_es.yaml.
"""

from zss.cli.clip_es import clip_es_main

if __name__ == "__main__":
    clip_es_main()
