"""Seen-only baseline: cross-entropy over the seen classes' text embeddings.

No distillation: the student learns only from seen-class labels (unseen and unlabelled pixels
are 255 and ignored). This is the reference every distillation method must beat on mIoU(U).
"""

from __future__ import annotations

from torch import Tensor

from zss.methods.base import Method, safe_cross_entropy, seen_text_logits, upsample_logits


class SeenOnlyBaseline(Method):
    """Supervised training on seen classes only (docs/methods.md (CLIP-ZSS) baseline; not a paper's method).

    Loss: ``CE(upsample(logit_scale · <embeds, T_seen>), label)`` with ``ignore_index=255``,
    logits bilinearly upsampled to the label size (pixels). Inherits every constructor argument
    of :class:`~zss.methods.base.Method`, including the optional ``transductive`` self-training
    settings (off by default; see :meth:`~zss.methods.base.Method.configure_transductive`).
    """

    def training_step(self, batch: dict) -> dict[str, Tensor]:
        """Seen CE (+ the transductive term when enabled).

        Args:
            batch: ``image`` Tensor[B, 3, H, W] float32, ``label`` Tensor[B, H, W] int64 (seen-only, 255
                elsewhere), optional ``valid`` Tensor[B, H, W] bool (False on padding).

        Returns:
            ``loss`` (graph) = CE + transductive weight · ``loss_st``; detached ``loss_ce``, ``loss_st`` and
            ``st_pixels`` (both 0 when the transductive setting is off).
        """
        images, label = batch["image"], batch["label"]  # [B,3,H,W], [B,H,W]
        embeds = self.student(images)  # [B, D, h, w]
        logits = upsample_logits(seen_text_logits(self, embeds), label.shape[-2:])  # [B, C_seen, H, W]
        loss = safe_cross_entropy(logits, self.to_seen_ids(label), self.ignore_index)
        out = {"loss": loss, "loss_ce": loss.detach()}
        return self.add_self_training(out, embeds, label, batch.get("valid"))
