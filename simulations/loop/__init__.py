"""The closed-loop experiment's parts: policies, the simulated generator, judging, retraining, reports."""
