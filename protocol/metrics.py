"""The scalars a reply carries, and why a device declined a round: the names both sides of the wire agree on."""

TRAIN_METRICS = ("num-examples", "train-loss", "update-norm", "clipped", "declined", "record-epsilon")
"""Every train reply carries exactly these scalars."""
EVAL_METRICS = ("num-examples", "eval-top1", "eval-nll", "personal-top1", "personal-nll")

DECLINED_NO = 0
DECLINED_RECORD_BUDGET = 1
DECLINED_NO_DATA = 2
DECLINE_REASONS = {
    DECLINED_RECORD_BUDGET: "record-level privacy budget of this device would be exceeded",
    DECLINED_NO_DATA: "no training examples on this device yet",
}
