"""Streaming preference prediction: each new event costs one LSTM step, and a returning user costs nothing more.

SEED.md's latency plan: the causal ``PreferenceLSTM`` (``bidirectional=False``) advances its hidden state by one
``step`` per event instead of re-reading the history, and each user's state is cached in a small file next to
their log (``model.device.stream_state``), so a user coming back after a restart continues with one step. The cached
state carries the fingerprint of the weights that made it: after a model update the state is stale, and it is
rebuilt once by replaying the user's log with the new weights.

Each step runs through ``model.network.step_kernel.StepKernel`` (the same arithmetic as ``model.step`` without
``nn.LSTM``'s per-call overhead). The state is a cache of the user's log, which is the durable record (the device's
SQLite store), so it need not be written after every event: with ``save_every=N`` it is written every N events,
when it leaves the in-memory cache and on ``flush``/``close``. After a crash the saved state is behind the log by
fewer than N events, and the next use replays just those (exact, because the model is causal).

Every step equals the full-sequence model ``model(x[:, :t+1], lengths)`` on the same history, because the
per-event features are exactly those of ``encode_events``: the stream carries the ``model.features.encoding.EventEncoder``
state (the previous event's time and the decayed counts of kept genres) in the user's state.

With ``window=W`` the predictor reads what the model was trained on instead: the last W events' rows, from the
initial state (``model.features.examples.windows``), so a device's prediction equals the training example's
``model(window)`` for the same point. Each event still costs one encoding (the rows and the encoder state are
kept); a prediction costs W steps (~0.03 ms each in ONNX Runtime).

The step is torch's (``TorchStep``, from a ``PreferenceLSTM``) or, on the device, the exported step in ONNX Runtime
(``OnnxStep``, ``model.device.runtime.DeviceStep``): a predictor serves either, and a state made by one is stale for
the other (their fingerprints differ).
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Protocol

import numpy as np
import torch

from model.device.runtime import DeviceStep
from model.features.encoding import FEATURE_DIM, EventEncoder
from model.log.events import Event
from model.network.networks import LSTMState, PreferenceLSTM
from model.network.step_kernel import StepKernel
from model.device.stream_state import (
    StaleStateError,
    UserStreamState,
    check_user_id,
    load_state,
    model_fingerprint,
    save_state,
    state_path,
)
from model.log.vocab import GENRES

HistoryLoader = Callable[[str], Sequence[Event]]
"""Returns a user's logged events, oldest first, *before* the event being observed (used only to rebuild)."""


def _softmax(logits: torch.Tensor) -> np.ndarray:
    return torch.softmax(logits, dim=-1).numpy().astype(np.float64)


class StreamStep(Protocol):
    """One event's step of a causal model: ``(features [1, FEATURE_DIM], (h, c)) -> (logits [1, 8], (h, c))``.

    ``fingerprint`` (64 hex characters) names what computes it: a saved state is continued only by the same one.
    """

    fingerprint: str

    def initial_state(self) -> LSTMState: ...

    def __call__(self, features: torch.Tensor, state: LSTMState) -> tuple[torch.Tensor, LSTMState]: ...


class TorchStep:
    """A causal ``PreferenceLSTM``'s step in torch (``StepKernel``), fingerprinted by its weights."""

    def __init__(self, model: PreferenceLSTM) -> None:
        if not model.is_causal:
            raise ValueError("StreamingPredictor needs a causal model (ModelConfig(bidirectional=False)); "
                             "found a bidirectional one.")
        self.model = model.eval()
        self.fingerprint = model_fingerprint(model)
        self._kernel = StepKernel(model)

    def initial_state(self) -> LSTMState:
        return self.model.initial_state(1)

    def __call__(self, features: torch.Tensor, state: LSTMState) -> tuple[torch.Tensor, LSTMState]:
        return self._kernel(features, state)


class OnnxStep:
    """An exported step in ONNX Runtime (what runs on the device), fingerprinted by the file's bytes."""

    def __init__(self, runtime: DeviceStep) -> None:
        self.runtime = runtime
        self.fingerprint = hashlib.sha256(runtime.path.read_bytes()).hexdigest()

    def initial_state(self) -> LSTMState:
        h, c = self.runtime.initial_state()
        return torch.from_numpy(h), torch.from_numpy(c)

    def __call__(self, features: torch.Tensor, state: LSTMState) -> tuple[torch.Tensor, LSTMState]:
        logits, h, c = self.runtime(features.numpy(), h=state[0].numpy(), c=state[1].numpy())
        return torch.from_numpy(logits), (torch.from_numpy(h), torch.from_numpy(c))


class StreamingPredictor:
    """Per-user incremental predictions of the causal preference model, cached on disk.

    The model is put in evaluation mode (no dropout) and must not be changed in place while the predictor uses it;
    after a model update call :meth:`set_model`. States live as ``<cache_dir>/<user_id>.stream`` and in a small
    in-memory LRU cache.

    Args:
        model: a causal ``PreferenceLSTM`` (stepped by ``TorchStep``), or any ``StreamStep`` (``OnnxStep``).
        cache_dir: where state files are kept (the directory of the users' logs).
        history: reads a user's log, for rebuilding a stale or missing state; without it a stale state raises
            ``StaleStateError`` and a missing one starts a new user.
        max_cached_users: states kept in memory besides their files.
        save_every: write a user's state file every this many of their events (1: after each). Above 1 it needs
            ``history``: the events since the last save are replayed from the log after a crash.
        window: predict from the last this many events (as training windows), not the whole history.
    """

    def __init__(self, model: PreferenceLSTM | StreamStep, cache_dir: str | Path, *, history: HistoryLoader | None = None,
                 max_cached_users: int = 1024, save_every: int = 1, window: int | None = None) -> None:
        if window is not None and window < 1:
            raise ValueError(f"window must be >= 1 (events a prediction reads) or None (the whole history). Found {window}.")
        self._window = window
        if max_cached_users < 0:
            raise ValueError(f"max_cached_users must be >= 0. Found {max_cached_users}.")
        if save_every < 1 or (save_every > 1 and history is None):
            raise ValueError("save_every must be >= 1, and above 1 needs history= (the log the events since the last "
                             f"save are replayed from after a crash). Found save_every={save_every}, "
                             f"history={'given' if history is not None else None}.")
        self.cache_dir = Path(cache_dir)
        self._history = history
        self._max_cached = max_cached_users
        self._save_every = save_every
        self._memory: OrderedDict[str, UserStreamState] = OrderedDict()
        self._unsaved: dict[str, int] = {}
        self.set_model(model)

    def set_model(self, model: PreferenceLSTM | StreamStep) -> None:
        """Serve ``model`` from now on; states made by other weights become stale and are rebuilt on next use."""
        self._step = TorchStep(model) if isinstance(model, PreferenceLSTM) else model
        self.fingerprint = self._step.fingerprint
        self._memory.clear()
        self._unsaved.clear()  # states of the old weights are stale: nothing of them is worth writing

    def observe(self, user_id: str | int, event: Event) -> np.ndarray:
        """Read one new event of the user: one LSTM step; returns the preference distribution ``[8]`` after it.

        Raises:
            ValueError: the event is older than the last one read for this user.
            StaleStateError: the cached state is from other weights and no ``history`` loader was given.
        """
        key = check_user_id(user_id)
        state = self._current_state(key)
        if state.last_ts is not None and event.ts < state.last_ts:
            raise ValueError(f"events must be observed in time order; the last one read is at ts={state.last_ts}. "
                             f"Found ts={event.ts}.")
        state = self._advance(state, [event])
        self._unsaved[key] = self._unsaved.get(key, 0) + 1
        if self._unsaved[key] >= self._save_every or self._max_cached == 0:
            self._store(key, state)
        else:
            self._remember(key, state)
        return _softmax(state.logits)

    def peek(self, user_id: str | int, event: Event) -> np.ndarray:
        """The distribution ``[8]`` the user's state would give after ``event``, without reading it into the state
        (what a request would get before the app logs it).

        Raises:
            ValueError, StaleStateError: as in :meth:`observe`.
        """
        state = self._current_state(check_user_id(user_id))
        if state.last_ts is not None and event.ts < state.last_ts:
            raise ValueError(f"events must be observed in time order; the last one read is at ts={state.last_ts}. "
                             f"Found ts={event.ts}.")
        return _softmax(self._advance(state, [event]).logits)

    def flush(self) -> None:
        """Write every state that has events not yet saved."""
        for key in list(self._unsaved):
            self._store(key, self._memory[key])

    def close(self) -> None:
        self.flush()

    def __enter__(self) -> StreamingPredictor:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def predict(self, user_id: str | int) -> np.ndarray:
        """The preference distribution ``[8]`` after the user's last observed event, without a step.

        Raises:
            LookupError: no event of this user has been observed.
            StaleStateError: as in :meth:`observe`.
        """
        key = check_user_id(user_id)
        state = self._current_state(key)
        if state.events_consumed == 0:
            raise LookupError(f"no events observed for user {key!r}: use the cold-start prior (generation.cold_start).")
        return _softmax(state.logits)

    def events_consumed(self, user_id: str | int) -> int:
        """How many events of the user the current state has read (0 for an unknown or stale user)."""
        key = check_user_id(user_id)
        state = self._memory.get(key) or load_state(state_path(self.cache_dir, key))
        return state.events_consumed if state is not None and state.fingerprint == self.fingerprint else 0

    def rebuild(self, user_id: str | int, events: Sequence[Event]) -> np.ndarray | None:
        """Replace the user's state by a replay of ``events`` (their whole log, oldest first) with this model.

        Returns:
            The distribution after the last event, or ``None`` for an empty log.
        """
        key = check_user_id(user_id)
        state = self._advance(self._fresh_state(), events)
        self._store(key, state)
        return _softmax(state.logits) if state.events_consumed else None

    def _fresh_state(self) -> UserStreamState:
        h, c = self._step.initial_state()
        return UserStreamState(h, c, torch.zeros(len(GENRES)), self.fingerprint, 0, None, torch.zeros(len(GENRES)),
                               torch.zeros(0, FEATURE_DIM))

    def _current_state(self, key: str) -> UserStreamState:
        """The user's usable state: from memory, else from the file, rebuilt from the log when stale or missing."""
        state = self._memory.get(key)
        if state is None:
            state = load_state(state_path(self.cache_dir, key))
        if state is not None and state.fingerprint == self.fingerprint:
            if self._save_every > 1 and key not in self._memory:  # a lazily saved file may be behind the log
                state = self._catch_up(key, state)
            self._remember(key, state)
            return state
        if self._history is not None:
            log = self._history(key)
            state = self._advance(self._fresh_state(), log)
            if log:  # a new user has nothing worth a file yet
                self._store(key, state)
            return state
        if state is None:
            return self._fresh_state()  # a new user
        raise StaleStateError(
            f"the cached state of user {key!r} was made by other model weights (fingerprint "
            f"{state.fingerprint[:12]}, the model's is {self.fingerprint[:12]}); call rebuild(user_id, events) "
            "with the user's log, or pass history= to rebuild automatically."
        )

    def _catch_up(self, key: str, saved: UserStreamState) -> UserStreamState:
        """A saved state brought level with the user's log: the events logged since it was written are replayed
        (a crash between saves leaves it behind); a log shorter than the state (events dropped) is replayed whole."""
        log = self._history(key)  # type: ignore[misc]
        if len(log) == saved.events_consumed:
            return saved
        if len(log) < saved.events_consumed:
            state = self._advance(self._fresh_state(), log)
        else:
            state = self._advance(saved, log[saved.events_consumed:])
        self._store(key, state)
        return state

    def _advance(self, state: UserStreamState, events: Sequence[Event]) -> UserStreamState:
        """``state`` after reading ``events``: one step each, or (with a window) their rows kept and the window's
        prediction computed once."""
        h, c, logits, rows = state.h, state.c, state.logits, state.rows
        encoder = EventEncoder(state.last_ts, state.recent.numpy().copy())
        if self._window is None:
            for event in events:
                step_logits, (h, c) = self._step(torch.from_numpy(encoder.encode(event)).unsqueeze(0), (h, c))
                logits = step_logits[0]
        elif events:
            new = torch.from_numpy(np.stack([encoder.encode(event) for event in events]))
            rows = torch.cat([rows, new])[-self._window:]
            logits = self._window_logits(rows)
        return UserStreamState(h, c, logits, self.fingerprint, state.events_consumed + len(events), encoder.last_ts,
                               torch.from_numpy(encoder.recent.copy()), rows)

    def _window_logits(self, rows: torch.Tensor) -> torch.Tensor:
        """The logits after ``rows`` read from the initial state: the model on that window."""
        h, c = self._step.initial_state()
        for row in rows:
            logits, (h, c) = self._step(row.unsqueeze(0), (h, c))
        return logits[0]

    def _store(self, key: str, state: UserStreamState) -> None:
        save_state(state_path(self.cache_dir, key), state)
        self._unsaved.pop(key, None)
        self._remember(key, state)

    def _remember(self, key: str, state: UserStreamState) -> None:
        if self._max_cached == 0:
            return
        self._memory[key] = state
        self._memory.move_to_end(key)
        while len(self._memory) > self._max_cached:
            evicted, evicted_state = self._memory.popitem(last=False)
            if evicted in self._unsaved:  # leaving memory: its file must hold what it read
                save_state(state_path(self.cache_dir, evicted), evicted_state)
                del self._unsaved[evicted]
