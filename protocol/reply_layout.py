"""What a device's replies hold: the names both sides of the wire agree on, and nothing else.

- A train reply holds one ArrayRecord, ``contribution``: the model's arrays, each holding the device's update (new
  weights minus the global prior; clipped on the device under user-level DP; all zero when it declines), and
  ``round-statistics``, the bounded statistics of ``privacy.contribution`` (participated, unclipped, loss). The
  server bounds, sums and noises the whole vector: no value in it is reported on its own.
- An evaluate reply holds one ArrayRecord, ``evaluation``, with one array ``scores``: ``EVAL_SCORES``, each in
  [0, 1] (the NLLs clipped to ``privacy.contribution.LOSS_BOUND`` and scaled), all zero for a device with nothing
  to score. The server sums and noises them like a release.
- An error reply carries a reason code from ``REASON_CODES``: never exception text, paths or values.
- The warm-up ping's reply is empty.
- A check-in reply (``privacy=distributed``: each device decides by its own coin whether it joins a round) holds one
  ConfigRecord, ``check-in``, with one entry ``joined`` (a bool): who takes part, which the network shows anyway.

No example count, loss, norm, epsilon or decline reason travels in the clear. A simulation slot's reply holds each
of its users' records under their positions (``protocol.records``).
"""

CONTRIBUTION = "contribution"
"""The train reply's one record."""
STATISTICS_ARRAY = "round-statistics"
"""The contribution's array of bounded statistics (a name no model parameter can have: it holds a dash)."""
EVALUATION = "evaluation"
"""The evaluate reply's one record."""
SCORES_ARRAY = "scores"
EVAL_SCORES = ("participated", "top1", "nll", "personal-top1", "personal-nll")
"""A device's evaluation scores, in order: it scored (0 or 1), the prior's top-1 and NLL on its latest points, and
the prior personalised on the device (its offset never leaves), each in [0, 1]."""

CHECK_IN = "check-in"
"""The check-in reply's one record."""
CHECK_IN_QUERY = "check_in"
"""The check-in's message type is ``query.check_in`` (Flower wants a Python identifier after the dot)."""
JOINED = "joined"

REASON_CODES = {
    "bad-instructions": "the message's instructions or arrays do not fit this app or the model",
    "device-data": "this device's node config names no readable log",
    "device-policy": "this device's privacy policy file cannot be read or breaks a rule",
    "policy-no-user-level-dp": "the run adds no user-level DP noise, which this device's policy requires",
    "policy-user-noise": "the user-level noise multiplier is below this device's floor",
    "policy-user-delta": "the user-level delta is outside this device's allowed range",
    "policy-user-epsilon": "the run's user-level epsilon is above this device's per-run cap",
    "policy-record-noise": "the record-level noise multiplier is below this device's floor",
    "policy-record-delta": "the record-level delta is outside this device's allowed range",
    "policy-record-epsilon": "the record-level budget per run is above this device's cap",
    "policy-run-changed": "the run's privacy mechanism differs from what it announced to this device earlier",
    "policy-round-order": "the round is not after the last one this device joined in this run, or past the run's plan",
    "not-checked-in": "the round asks for this device's share, but the device's own coin did not join it to that round",
    "internal": "this device failed to compute its reply",
}
"""Why a device answers with an error instead of a contribution: a fixed code, and what it means."""
