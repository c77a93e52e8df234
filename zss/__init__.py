"""zss: distillation-based zero-shot semantic segmentation."""
__version__ = "0.1.0"
