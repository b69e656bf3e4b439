"""What would leave this device at the next round, described from the wire contract (``protocol.reply_layout``).

The studio shows this so a person can see that their log, prompts, pieces, personal offset and the request never
travel: a train reply is the bounded contribution only, an evaluate reply five bounded scores, an error a reason
code. It describes the layout (names, shapes, bounds); it never shows values as if they had been sent: the
contribution is computed, clipped and sent by the ClientApp during a round, and the server adds the noise to the sum.
"""

from __future__ import annotations

import math

from model.device.prior_store import KeptPrior
from privacy.contribution import STATISTIC_WEIGHT, STATISTICS
from protocol.reply_layout import CONTRIBUTION, EVAL_SCORES, EVALUATION, REASON_CODES, SCORES_ARRAY, STATISTICS_ARRAY

NEVER = ("your events and their times", "your prompts", "the generated pieces and requests",
         "your personal offset", "your questionnaire", "your stream state")


def what_leaves(kept: KeptPrior | None) -> dict:
    """The replies this device can send and what each holds; the model's arrays from the kept prior, if any."""
    arrays = [] if kept is None else [{"name": name, "shape": list(value.shape)}
                                      for name, value in kept.weights().items()]
    return {
        "train": {
            "record": CONTRIBUTION,
            "arrays": arrays,
            "parameters": sum(math.prod(a["shape"]) for a in arrays),
            "statistics": {"array": STATISTICS_ARRAY, "values": list(STATISTICS),
                           "bound": f"each in [0, {STATISTIC_WEIGHT}·C]"},
            "how": ("your update (new weights minus the global prior), clipped on this device to the norm C the "
                    "server announces, and three bounded statistics; all zero if the device sits the round out. The "
                    "server adds Gaussian noise to the sum of every device's contribution before anything is released."),
        },
        "evaluate": {"record": EVALUATION, "array": SCORES_ARRAY, "values": list(EVAL_SCORES), "bound": "each in [0, 1]"},
        "error": {"reason_codes": sorted(REASON_CODES)},
        "never": list(NEVER),
    }
