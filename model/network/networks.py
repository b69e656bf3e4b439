"""The preference LSTM: the seed's bidirectional model, corrected, its causal streaming variant, and the residual
model that learns a correction to the heuristic prior.

All are one class. With ``residual=True`` the logits are ``model.features.heuristic_prior.prior_logits`` of the request's
own feature row plus a linear head over the LSTM's final state and that row, the head starting at zero: the
untrained model *is* the heuristic, and what training learns (how the request's moods and words, the hour and the
event stream shift the user's recent taste) is added to it. Parameter names are exactly ``nn.LSTM``'s (``lstm.weight_ih_l0`` ...), so a state_dict moves
freely between training (which may use the per-sample-gradient path for DP-SGD) and inference code.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence

from model.features.encoding import FEATURE_DIM, GENRE_SLOTS
from model.features.heuristic_prior import prior_logits
from model.log.vocab import GENRES
from model.network.step_kernel import kernel_for
from model.per_sample import linear_with_grad_sample, lstm_with_grad_sample

LSTMState = tuple[torch.Tensor, torch.Tensor]


@dataclass(frozen=True)
class ModelConfig:
    """Architecture. Defaults are the seed's: 2-layer bidirectional LSTM, hidden 64, dropout 0.3, head dropout 0.5.

    ``residual``: the head reads the final state and the request's feature row and its output, starting at zero,
    is added to the heuristic prior (module docstring).
    """

    bidirectional: bool = True
    hidden_size: int = 64
    num_layers: int = 2
    dropout: float = 0.3
    head_dropout: float = 0.5
    style_embedding_dim: int = 32
    residual: bool = False

    def __post_init__(self) -> None:
        if self.hidden_size < 1 or self.num_layers < 1 or self.style_embedding_dim < 1:
            raise ValueError(
                "model.hidden_size, model.num_layers and model.style_embedding_dim must be positive; "
                f"found {self.hidden_size}, {self.num_layers}, {self.style_embedding_dim}."
            )
        for name in ("dropout", "head_dropout"):
            value = getattr(self, name)
            if not 0.0 <= value < 1.0:
                raise ValueError(f"model.{name} must be in [0, 1); found {value}.")


class PreferenceLSTM(nn.Module):
    """Events -> logits over the 8 genres of the user's next kept segment.

    The style one-hot is embedded by a bias-free linear map (a learned 32-dim embedding that also accepts
    soft one-hots), concatenated with the other event features, read by the LSTM; the final hidden states
    (both directions when bidirectional) go through dropout into a linear head. ``forward`` returns logits;
    ``predict_proba`` the distribution.
    """

    def __init__(self, config: ModelConfig = ModelConfig()) -> None:
        super().__init__()
        self.config = config
        directions = 2 if config.bidirectional else 1
        self.style_embedding = nn.Linear(GENRE_SLOTS, config.style_embedding_dim, bias=False)
        self.lstm = nn.LSTM(
            input_size=config.style_embedding_dim + FEATURE_DIM - GENRE_SLOTS,
            hidden_size=config.hidden_size,
            num_layers=config.num_layers,
            dropout=config.dropout if config.num_layers > 1 else 0.0,
            bidirectional=config.bidirectional,
            batch_first=True,
        )
        self.head_dropout = nn.Dropout(config.head_dropout)
        self.head = nn.Linear(directions * config.hidden_size + (FEATURE_DIM if config.residual else 0), len(GENRES))
        if config.residual:
            nn.init.zeros_(self.head.weight)
            nn.init.zeros_(self.head.bias)
        self.per_sample_grads = False
        """When True, backward also stores each parameter's per-sample gradient in ``p.grad_sample`` (DP-SGD)."""

    @property
    def is_causal(self) -> bool:
        return not self.config.bidirectional

    def _embed(self, x: torch.Tensor) -> torch.Tensor:
        genre, rest = x[..., :GENRE_SLOTS], x[..., GENRE_SLOTS:]
        if self.per_sample_grads:
            style = linear_with_grad_sample(self.style_embedding, genre)
        else:
            style = self.style_embedding(genre)
        return torch.cat([style, rest], dim=-1)

    def _logits(self, features: torch.Tensor, last_row: torch.Tensor) -> torch.Tensor:
        """Logits from the final LSTM features and the feature row of the event predicted at."""
        features = self.head_dropout(features)
        if self.config.residual:
            features = torch.cat([features, last_row], dim=-1)
        logits = linear_with_grad_sample(self.head, features) if self.per_sample_grads else self.head(features)
        return logits + prior_logits(last_row) if self.config.residual else logits

    def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """Logits ``[B, 8]`` for right-padded windows ``x [B, T, FEATURE_DIM]`` with ``lengths [B]`` (each >= 1)."""
        inputs = self._embed(x)
        if self.per_sample_grads:
            _, h_n = lstm_with_grad_sample(self.lstm, inputs, lengths)
        elif self.training and torch.is_grad_enabled() and type(self.lstm) is nn.LSTM:
            # Same recurrence without per-sample gradients: faster to train on CPU than the packed nn.LSTM.
            # (Only for nn.LSTM itself: a swapped-in module such as Opacus' DPLSTM runs its own forward.)
            _, h_n = lstm_with_grad_sample(self.lstm, inputs, lengths, per_sample=False)
        else:
            packed = pack_padded_sequence(inputs, lengths.cpu(), batch_first=True, enforce_sorted=False)
            _, (h_n, _) = self.lstm(packed)
        last = torch.cat([h_n[-2], h_n[-1]], dim=-1) if self.config.bidirectional else h_n[-1]
        last_row = x[torch.arange(x.shape[0]), lengths.to(x.device) - 1]
        return self._logits(last, last_row)

    @torch.no_grad()
    def predict_proba(self, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """The predicted preference distribution ``[B, 8]`` (evaluation mode is the caller's choice)."""
        return torch.softmax(self.forward(x, lengths), dim=-1)

    def initial_state(self, batch_size: int = 1) -> LSTMState:
        """Zero (h, c) for streaming with :meth:`step`."""
        shape = (self.config.num_layers, batch_size, self.config.hidden_size)
        return torch.zeros(shape), torch.zeros(shape)

    def example_step_inputs(self, batch_size: int = 1) -> dict[str, torch.Tensor]:
        """Zero inputs of :meth:`step` besides its state, by parameter name in call order (the device export
        reads its input layout from here: keep it in step with ``step``'s signature)."""
        return {"event_features": torch.zeros(batch_size, FEATURE_DIM)}

    def step(self, event_features: torch.Tensor, state: LSTMState) -> tuple[torch.Tensor, LSTMState]:
        """Advance the causal model by one event ``[B, FEATURE_DIM]``; returns (logits ``[B, 8]``, new state).

        Equal to ``forward`` over the whole history ending at this event, at the cost of one step. In evaluation
        mode without autograd this is ``model.network.step_kernel.StepKernel`` (the same arithmetic, equal up to float
        rounding, without ``nn.LSTM``'s module call: about a quarter of the time); in training mode (dropout), with
        gradients, per-sample gradients, a swapped-in LSTM module, or while compiling/exporting, the module runs.
        """
        if not self.is_causal:
            raise ValueError("step() needs a causal model (model.bidirectional=false): a bidirectional model reads the whole sequence.")
        if (not self.training and not torch.is_grad_enabled() and not self.per_sample_grads
                and type(self.lstm) is nn.LSTM and not torch.compiler.is_compiling()):
            return kernel_for(self)(event_features, state)
        output, state = self.lstm(self._embed(event_features).unsqueeze(1), state)
        return self._logits(output[:, -1], event_features), state
