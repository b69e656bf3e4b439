"""Sequence-level augmentation from the seed: random truncation and time masking.

Both act on right-padded batches and never touch the last real event of a window: that is the request being
predicted, whose time of day carries the daily rhythm.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class AugmentConfig:
    """Attributes:
    truncate_prob: chance that a window loses a random number of its oldest events.
    min_length: truncation never leaves fewer events than this.
    mask_prob: chance that a window gets one contiguous span of events zeroed (time masking).
    max_mask: longest masked span, in events.
    """

    truncate_prob: float = 0.0
    min_length: int = 4
    mask_prob: float = 0.0
    max_mask: int = 4

    def __post_init__(self) -> None:
        for name in ("truncate_prob", "mask_prob"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"augment.{name} must be a probability in [0, 1]; found {value}.")
        if self.min_length < 1 or self.max_mask < 0:
            raise ValueError(
                f"augment.min_length must be >= 1 and augment.max_mask >= 0; found {self.min_length}, {self.max_mask}."
            )

    @property
    def enabled(self) -> bool:
        return self.truncate_prob > 0.0 or self.mask_prob > 0.0


def augment_batch(
    x: torch.Tensor, lengths: torch.Tensor, config: AugmentConfig, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """Return an augmented copy of a right-padded batch ``x [B, T, F]`` and its new lengths."""
    batch, window, _ = x.shape
    if batch == 0 or not config.enabled:
        return x, lengths
    steps = torch.arange(window)
    # Random truncation: keep a random suffix of each chosen window, shifted back to start at position 0.
    keep = lengths.clone()
    chosen = (torch.rand(batch, generator=generator) < config.truncate_prob) & (lengths > config.min_length)
    if chosen.any():
        span = (lengths[chosen] - config.min_length + 1).to(torch.float64)
        keep[chosen] = config.min_length + (torch.rand(int(chosen.sum()), generator=generator) * span).long()
    offset = (lengths - keep).unsqueeze(1)
    index = (steps.unsqueeze(0) + offset).clamp(max=window - 1)
    out = torch.gather(x, 1, index.unsqueeze(-1).expand_as(x))
    out = out * (steps.unsqueeze(0) < keep.unsqueeze(1)).unsqueeze(-1)
    # Time masking: zero one contiguous span that ends before the last real event.
    masked = (torch.rand(batch, generator=generator) < config.mask_prob) & (keep > 1)
    if masked.any() and config.max_mask > 0:
        room = (keep - 1).clamp(min=1)
        width = (1 + (torch.rand(batch, generator=generator) * config.max_mask).long()).minimum(room)
        start = (torch.rand(batch, generator=generator) * (room - width + 1)).long()
        span = (steps.unsqueeze(0) >= start.unsqueeze(1)) & (steps.unsqueeze(0) < (start + width).unsqueeze(1))
        out = out * ~(span & masked.unsqueeze(1)).unsqueeze(-1)
    return out, keep
