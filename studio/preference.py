"""What the device predicts its user wants next: the kept global prior streamed in ONNX Runtime, the personal offset,
and the cold start until the user has made enough requests.

* The prior is the last one the device kept (``model.device.prior_store``, written by the ClientApp or handed to the
  room). Each logged event is encoded into the stream's state (``model.device.streaming`` with ``OnnxStep``: saved
  every few events, replayed from the log after a crash), and a prediction runs the ONNX step over the last
  ``window`` events from the initial state: exactly what the model was trained on (``model.features.encoding``'s
  windows), so a device's prediction is the training example's. A new prior makes the state stale; it is rebuilt
  once from the log.
* The personal offset (``model.network.personalise``) is fit on the device's own log against the kept prior and kept
  beside it with the prior's fingerprint, so a new prior refits it. It never leaves the device.
* Cold start (``generation.cold_start``): for the user's first ``exploration.interactions`` requests the
  preference is their questionnaire mixed with the prior's population prior at that local time, and the main genre
  is sampled from it (exploration mode). Without any prior yet, the heuristic prior of the request's own features
  (``model.features.heuristic_prior``, what an untrained residual model predicts) stands in.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from generation.cold_start import (
    ExplorationConfig, Questionnaire, choose_genre, explored_preference, population_prior, starting_preference,
)
from model.device.prior_store import KeptPrior, PriorStore
from model.device.streaming import OnnxStep, StreamingPredictor
from model.features.encoding import encode_events
from model.features.examples import build_examples
from model.features.heuristic_prior import prior_logits
from model.log.events import Event
from model.log.vocab import GENRES
from model.network.networks import PreferenceLSTM
from model.network.personalise import fit_personal_bias
from storage.atomic import atomic_write_bytes

USER = "user"
"""The one user a device room streams for (its state file is ``stream/user.stream``)."""
EXPLORE_STREAM = 7
"""Stream number of the exploration draw, ``default_rng([seed, EXPLORE_STREAM])``."""


@dataclass(frozen=True)
class Preference:
    """A predicted genre distribution and where it came from.

    Attributes:
        probs: the distribution ``[8]`` (``GENRES`` order) the request is conditioned on.
        source: "global prior", "global prior + personal offset", "cold start" or "heuristic (no global prior yet)".
        offset: the personal logit offset applied ``[8]`` (zeros when none).
        explored: the main genre was sampled (cold start's exploration mode).
        prior_version: "<run> v<version>" of the kept prior used, or None.
    """

    probs: np.ndarray
    source: str
    offset: np.ndarray
    explored: bool = False
    prior_version: str | None = None


class DevicePreference:
    """The preference of the device's one user, over its storage folder and its events (oldest first).

    Args:
        storage: the device's storage folder (``prior/``, ``stream/``, ``personal_offset.json`` inside).
        events: returns the events logged so far, oldest first (the room's copy of its log store).
        window: events a prediction (and each personalisation example) reads: the federation's
            ``population.window``, as the model was trained.
        exploration, questionnaire_weight: cold start.
        personal: fit and apply the personal offset.
        save_every: write the stream state every this many events (replayed from the log after a crash).
    """

    def __init__(self, storage: Path, events: Callable[[], Sequence[Event]], *, window: int,
                 exploration: ExplorationConfig, questionnaire_weight: float, personal: bool,
                 save_every: int = 16) -> None:
        self.storage, self._events, self.window = Path(storage), events, window
        self.exploration, self.questionnaire_weight, self.personal = exploration, questionnaire_weight, personal
        self.save_every = save_every
        self.priors = PriorStore(self.storage / "prior")
        self.kept: KeptPrior | None = None
        self._stamp: tuple[int, int] | None = None  # the store's pointer when ``kept`` was read (PriorStore.stamp)
        self._model: PreferenceLSTM | None = None
        self._predictor: StreamingPredictor | None = None
        self._step: OnnxStep | None = None
        self._offset: np.ndarray | None = None

    # ------------------------------------------------------------------------------------------------ the prior
    def refresh(self) -> KeptPrior | None:
        """Load the store's current prior if it is not the one in use (e.g. the ClientApp kept a newer one). Reads
        the store only when its pointer changed (one ``stat`` otherwise: this runs for every event and request)."""
        stamp = self.priors.stamp()
        if stamp == self._stamp:
            return self.kept
        self._stamp = stamp
        current = self.priors.current()
        if current is not None and (self.kept is None or current.folder != self.kept.folder):
            step = OnnxStep(current.runtime())
            predictor = StreamingPredictor(step, self.storage / "stream", history=lambda user: self._events(),
                                           save_every=self.save_every, window=self.window)
            if self._predictor is not None:
                self._predictor.close()
            self.kept, self._step, self._predictor, self._model, self._offset = current, step, predictor, None, None
        return self.kept

    def model(self) -> PreferenceLSTM | None:
        """The kept prior as a torch model (for the population prior and fitting the offset), loaded once."""
        if self._model is None and self.refresh() is not None:
            self._model = self.kept.model()
        return self._model

    def observe(self, event: Event) -> None:
        """One event being logged: one ONNX step (nothing before the first prior). Call it before the event joins
        ``events()``: a state behind the log is first brought level by replaying the events before this one."""
        if self.refresh() is not None:
            self._predictor.observe(USER, event)

    def forget_stream(self) -> None:
        """Drop the in-memory stream state because the log changed under it (another process appended): the next
        prediction reads the saved state and replays the log since."""
        if self._predictor is not None:
            self._predictor.set_model(self._step)

    def close(self) -> None:
        if self._predictor is not None:
            self._predictor.close()

    # ------------------------------------------------------------------------------------------ personal offset
    def offset(self) -> np.ndarray:
        """The personal logit offset for the kept prior: kept beside it, refit when the prior changed."""
        if not self.personal or self.refresh() is None:
            return np.zeros(len(GENRES))
        if self._offset is None:
            path = self.storage / "personal_offset.json"
            saved = json.loads(path.read_text()) if path.is_file() else {}
            if saved.get("fingerprint") == self.kept.info.fingerprint:
                self._offset = np.asarray(saved["offset"], dtype=np.float64)
            else:
                self._offset = self.refit_offset()
        return self._offset

    def refit_offset(self) -> np.ndarray:
        """Fit the offset on the whole log against the kept prior and keep it (``model.network.personalise``)."""
        model = self.model()
        events = list(self._events())
        offset = np.zeros(len(GENRES))
        if model is not None and events:
            offset = fit_personal_bias(model, build_examples(events, self.window)).numpy().astype(np.float64)
        if self.kept is not None:
            atomic_write_bytes(self.storage / "personal_offset.json", json.dumps(
                {"fingerprint": self.kept.info.fingerprint, "offset": offset.tolist(), "events": len(events)}).encode())
        self._offset = offset
        return offset

    # ---------------------------------------------------------------------------------------------- prediction
    def at(self, request: Event, *, logged: bool, interactions_done: int, answers: Questionnaire | None,
           seed: int | None) -> Preference:
        """The preference for ``request`` (a ``generation_requested`` event; ``logged``: already observed).

        Args:
            interactions_done: the user's requests before this one (cold start while fewer than
                ``exploration.interactions``).
            answers: the sign-up questionnaire, if the user answered it.
            seed: seeds the exploration draw (None: fresh entropy).
        """
        kept = self.refresh()
        version = None if kept is None else f"{kept.info.run_key} v{kept.info.version}"
        zeros = np.zeros(len(GENRES))
        if interactions_done < self.exploration.interactions:
            return self._cold_start(request, interactions_done, answers, seed, version)
        if kept is None:
            return Preference(self._heuristic(request, logged), "heuristic (no global prior yet)", zeros)
        probs = self._predictor.predict(USER) if logged else self._predictor.peek(USER, request)
        offset = self.offset()
        if not np.any(offset):
            return Preference(probs, "global prior", offset, prior_version=version)
        logits = np.log(np.maximum(probs, 1e-300)) + offset
        personal = np.exp(logits - logits.max())
        return Preference(personal / personal.sum(), "global prior + personal offset", offset, prior_version=version)

    def _cold_start(self, request: Event, interactions_done: int, answers: Questionnaire | None,
                    seed: int | None, version: str | None) -> Preference:
        model = self.model()
        if model is not None:
            prior = population_prior(model, ts=request.ts, utc_offset_min=request.utc_offset_min)
        else:
            prior = self._heuristic(request, logged=False, history=False)
        start = prior if answers is None else starting_preference(answers, prior,
                                                                   questionnaire_weight=self.questionnaire_weight)
        rng = np.random.default_rng(None if seed is None else [seed, EXPLORE_STREAM])
        choice = choose_genre(start, interactions_done=interactions_done, config=self.exploration, rng=rng)
        return Preference(explored_preference(start, choice.genre), "cold start", np.zeros(len(GENRES)),
                          explored=choice.explored, prior_version=version)

    def _heuristic(self, request: Event, logged: bool, history: bool = True) -> np.ndarray:
        """The heuristic prior of the request's own feature row (the untrained residual model's prediction)."""
        events = list(self._events()) if history else []
        if not logged or not events:
            events.append(request)
        row = torch.from_numpy(encode_events(events)[-1])
        return torch.softmax(prior_logits(row), -1).numpy().astype(np.float64)
