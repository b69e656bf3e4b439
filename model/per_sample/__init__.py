"""Exact per-sample gradients for DP-SGD with Opacus' ``DPOptimizer``: ``nn.LSTM`` and ``nn.Linear``.

The functions run a layer and, on backward, leave each parameter's per-sample gradient in ``p.grad_sample``
(``[B, *p.shape]``) besides the usual ``p.grad``; ``opacus.optimizers.DPOptimizer`` then clips each sample's
gradient (norm over all parameters jointly), adds noise and steps. No ``GradSampleModule`` or ``PrivacyEngine``
is involved (both refuse ``nn.LSTM``), so the caller builds the ``DPOptimizer`` and keeps the accountant itself.

Use (Abadi et al. 2016, Algorithm 1, with Poisson sampling of rate q over n local examples)::

    optimizer = DPOptimizer(torch.optim.SGD(model.parameters(), lr=lr), noise_multiplier=z, max_grad_norm=C,
                            expected_batch_size=max(1, round(q * n)), loss_reduction="mean")
    optimizer.zero_grad()                       # also clears p.grad_sample: required before every batch
    loss = F.cross_entropy(model(x, lengths), y, reduction="sum")   # SUM: grad_sample[n] = example n's gradient
    loss.backward()
    optimizer.step()                            # (sum of clipped + N(0, z^2 C^2)) / expected_batch_size

Every trainable parameter in the optimizer must go through one of these functions (Opacus raises on a parameter
without ``grad_sample``). An empty batch (``B = 0``) works and gives a noise-only step, as DP-SGD with Poisson
sampling requires.
"""

from model.per_sample.linear import accumulate_grad_sample, linear_with_grad_sample
from model.per_sample.lstm import lstm_with_grad_sample

__all__ = ["accumulate_grad_sample", "linear_with_grad_sample", "lstm_with_grad_sample"]
