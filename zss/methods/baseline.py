"""Seen-only baseline: cross-entropy over the seen classes' text embeddings.

No distillation: the student learns only from seen-class labels (unseen and unlabelled pixels
are 255 and ignored). This is the reference every distillation method must beat on mIoU(U).
"""
from __future__ import annotations

from torch import Tensor

from zss.methods.base import Method, safe_cross_entropy, seen_text_logits, upsample_logits


class SeenOnlyBaseline(Method):
    """Supervised training on seen classes only (DESIGN §5 baseline; not a paper's method).

    Loss: ``CE(upsample(logit_scale · <embeds, T_seen>), label)`` with ``ignore_index=255``,
    logits bilinearly upsampled to the label size (pixels). Inherits every constructor argument
    of :class:`~zss.methods.base.Method`.
    """

    def training_step(self, batch: dict) -> dict[str, Tensor]:
        images, label = batch["image"], batch["label"]  # [B,3,H,W], [B,H,W]
        embeds = self.student(images)  # [B, D, h, w]
        logits = upsample_logits(seen_text_logits(self, embeds), label.shape[-2:])  # [B, C_seen, H, W]
        loss = safe_cross_entropy(logits, self.to_seen_ids(label), self.ignore_index)
        return {"loss": loss, "loss_ce": loss.detach()}
