#!/usr/bin/env python
"""Segment your own images: ``python scripts/predict.py ckpt=<file> image=<file or folder> classes="cat,dog,grass"``.

Options (configs/predict.yaml): classes_file=<txt>, out=<dir> (default predictions/), mode=whole|slide,
short_side=512, teacher.pretrained=<weights> (text encoder for a new vocabulary), overwrite=true.
"""

from zss.cli.predict import predict_main

if __name__ == "__main__":
    predict_main()
