"""Forward and backward pass of K copies of the causal one-layer ``PreferenceLSTM``, each on its own batch.

The K copies (one per user, parameters stacked ``[K, *shape]``) run as one computation: the LSTM recurrence of
``model.per_sample.lstm`` with the users in its batch-of-weights dimension (where it puts the directions), the
embedding, input projection and head as batched matmuls. The gradients are written out by hand (the same
equations as ``model.per_sample.lstm``'s docstring, plus the linear layers and softmax cross-entropy), either summed
over each user's batch (plain SGD) or per example (DP-SGD's per-sample clipping, Goodfellow 2015, eq. 2).
Each user's numbers are those of ``PreferenceLSTM.forward`` on its own batch, up to float rounding.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from model.features.encoding import FEATURE_DIM, GENRE_SLOTS
from model.features.heuristic_prior import prior_logits
from model.per_sample.lstm import backward_recurrence, recurrence

PARAMETER_NAMES = ("style_embedding.weight", "lstm.weight_ih_l0", "lstm.weight_hh_l0", "lstm.bias_ih_l0",
                   "lstm.bias_hh_l0", "head.weight", "head.bias")
"""The causal one-layer model's parameters, in ``named_parameters`` order (the order DPOptimizer draws noise in)."""


@dataclass(frozen=True)
class StackedBatch:
    """One batch per user, right-padded to the longest batch and the longest window of the step.

    Attributes:
        x: ``[K, B, T, FEATURE_DIM]``, zero where padded.
        lengths: int64 ``[K, B]``; 1 for padded entries.
        targets: int64 ``[K, B]``; 0 for padded entries.
        weights: ``[K, B]``: each real entry's weight in its user's loss (1 / count for a mean, 1 for a sum), 0 for
            padding, so padded entries add exactly nothing to any gradient.
        counts: int64 ``[K]``, each user's real batch size (0: an empty Poisson batch).
    """

    x: Tensor
    lengths: Tensor
    targets: Tensor
    weights: Tensor
    counts: Tensor

    @staticmethod
    def of(parts: Sequence[tuple[Tensor, Tensor, Tensor]], *, mean: bool) -> "StackedBatch":
        """Stack ``(x [b, window, F], lengths [b], targets [b])`` per user; ``mean``: weights 1 / b, else 1."""
        counts = torch.tensor([len(lengths) for _, lengths, _ in parts], dtype=torch.int64)
        width = max(1, int(counts.max()) if len(parts) else 1)
        steps = max([1] + [int(lengths.max()) for _, lengths, _ in parts if len(lengths)])
        x = torch.zeros(len(parts), width, steps, FEATURE_DIM)
        lengths = torch.ones(len(parts), width, dtype=torch.int64)
        targets = torch.zeros(len(parts), width, dtype=torch.int64)
        weights = torch.zeros(len(parts), width)
        for k, (x_k, lengths_k, targets_k) in enumerate(parts):
            count = len(lengths_k)
            x[k, :count] = x_k[:, :steps]
            lengths[k, :count], targets[k, :count] = lengths_k, targets_k
            weights[k, :count] = 1.0 / count if mean else 1.0
        return StackedBatch(x, lengths, targets, weights, counts)


def loss_and_gradients(params: dict[str, Tensor], batch: StackedBatch, *, residual: bool,
                       per_sample: bool) -> tuple[Tensor, dict[str, Tensor]]:
    """Each user's weighted cross-entropy ``[K]`` and its gradients: ``[K, *shape]`` summed over the user's batch,
    or ``[K, B, *shape]`` per example with ``per_sample``. ``params`` by ``PARAMETER_NAMES``, each ``[K, *shape]``."""
    embed, w_ih, w_hh = params["style_embedding.weight"], params["lstm.weight_ih_l0"], params["lstm.weight_hh_l0"]
    head_w, head_b = params["head.weight"], params["head.bias"]
    users, width, steps, features = batch.x.shape
    hidden = w_hh.shape[2]
    genre = batch.x[..., :GENRE_SLOTS].reshape(users, width * steps, GENRE_SLOTS)
    inputs = torch.cat([torch.bmm(genre, embed.transpose(1, 2)),
                        batch.x[..., GENRE_SLOTS:].reshape(users, width * steps, features - GENRE_SLOTS)], dim=-1)
    double_g = torch.ones(4 * hidden)
    double_g[2 * hidden : 3 * hidden] = 2.0  # the recurrence computes tanh(z) as 2 sigmoid(2z) - 1
    bias = (params["lstm.bias_ih_l0"] + params["lstm.bias_hh_l0"]) * double_g
    z = torch.baddbmm(bias[:, None, :], inputs, (w_ih * double_g[:, None]).transpose(1, 2))
    gates, cells, tanh_c, hs = recurrence(z.view(users, width, steps, 4 * hidden), w_hh * double_g[:, None])

    k_index, b_index = torch.arange(users)[:, None], torch.arange(width)[None, :]
    last_row = batch.x[k_index, b_index, batch.lengths - 1]  # the request's own feature row
    features_in = torch.cat([hs[k_index, b_index, batch.lengths], last_row], dim=-1) if residual \
        else hs[k_index, b_index, batch.lengths]
    logits = torch.baddbmm(head_b[:, None, :], features_in, head_w.transpose(1, 2))
    if residual:
        logits = logits + prior_logits(last_row)
    log_p = torch.log_softmax(logits, dim=-1)
    losses = -(log_p.gather(-1, batch.targets[..., None]).squeeze(-1) * batch.weights).sum(1)
    d_logits = log_p.exp()
    d_logits[k_index, b_index, batch.targets] -= 1.0
    d_logits.mul_(batch.weights[..., None])

    dh = torch.zeros(users, width, steps, hidden)
    dh[k_index, b_index, batch.lengths - 1] = torch.bmm(d_logits, head_w[:, :, :hidden])
    dz = backward_recurrence(dh, gates, cells, tanh_c, w_hh)  # d loss / d pre-activations [K, B, T, 4H]
    d_style = torch.bmm(dz.view(users, width * steps, 4 * hidden), w_ih[:, :, : embed.shape[1]])
    previous_h = hs[:, :, :steps]
    if per_sample:
        rows = users * width
        dz_t = dz.view(rows, steps, 4 * hidden).transpose(1, 2)
        bias_grad = dz.sum(2)
        grads = {
            "style_embedding.weight": torch.bmm(d_style.view(rows, steps, -1).transpose(1, 2),
                                                genre.view(rows, steps, GENRE_SLOTS)).view(users, width, *embed.shape[1:]),
            "lstm.weight_ih_l0": torch.bmm(dz_t, inputs.view(rows, steps, -1)).view(users, width, *w_ih.shape[1:]),
            "lstm.weight_hh_l0": torch.bmm(dz_t, previous_h.reshape(rows, steps, hidden)).view(users, width, *w_hh.shape[1:]),
            "lstm.bias_ih_l0": bias_grad, "lstm.bias_hh_l0": bias_grad.clone(),
            "head.weight": d_logits[..., :, None] * features_in[..., None, :], "head.bias": d_logits,
        }
    else:
        dz_t = dz.view(users, width * steps, 4 * hidden).transpose(1, 2)
        bias_grad = dz.sum((1, 2))
        grads = {
            "style_embedding.weight": torch.bmm(d_style.transpose(1, 2), genre),
            "lstm.weight_ih_l0": torch.bmm(dz_t, inputs),
            "lstm.weight_hh_l0": torch.bmm(dz_t, previous_h.reshape(users, width * steps, hidden)),
            "lstm.bias_ih_l0": bias_grad, "lstm.bias_hh_l0": bias_grad.clone(),
            "head.weight": torch.bmm(d_logits.transpose(1, 2), features_in), "head.bias": d_logits.sum(1),
        }
    return losses, grads
