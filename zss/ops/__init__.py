"""Algorithmic kernels in pure torch (CPU and GPU): batched K-Means and CLIP-ZSS pseudo labels."""

from zss.ops.kmeans import KMeansResult, batched_kmeans, partition_sse
from zss.ops.pseudo_labels import PseudoLabels, fuse_masks, fused_labels, pseudo_labels, window_seeds

__all__ = [
    "KMeansResult",
    "batched_kmeans",
    "partition_sse",
    "PseudoLabels",
    "fuse_masks",
    "fused_labels",
    "pseudo_labels",
    "window_seeds",
]
