"""The heuristic the preference model starts from: what the user kept lately, overruled by what they asked for.

``prior_logits`` reads only the request event's own feature row (``model.features.encoding``): the decayed counts of the
genres the user kept (``RECENT``) and the genres the prompt names or rules out (``REQUEST``). Its arg-max is the
"named genre, else the user's recent favourite" rule, and its softmax a smoothed version of it, so a model whose
learned correction is zero (untrained, or drowned in DP noise) predicts exactly this heuristic, and training can
only add to it. It has no parameters: nothing here is trained, sent or noised.
"""

from __future__ import annotations

import torch

from model.features.encoding import EXCLUDED_GENRES, NAMED_GENRES, RECENT

RECENT_SMOOTHING = 0.3
"""Added to each decayed count before the log: a genre never kept lately keeps some probability."""
NAMED_BONUS = 4.0
"""Logit added to a genre the prompt names (and taken from one it rules out): above any log-count gap here
(log((6.7 + 0.3) / 0.3) = 3.2), so a named genre always wins, as the rule says."""


def prior_logits(rows: torch.Tensor) -> torch.Tensor:
    """Heuristic logits ``[..., 8]`` from feature rows ``[..., FEATURE_DIM]`` (the rule in the module docstring)."""
    recent = torch.log(rows[..., RECENT].clamp_min(0.0) + RECENT_SMOOTHING)
    return recent + NAMED_BONUS * (rows[..., NAMED_GENRES] - rows[..., EXCLUDED_GENRES])
