"""How the app conditions each generation: the policies the experiment compares on the same users.

A policy turns a request (who, when, the prompt, what it has logged) into the preference distribution and recent
tempo/instrument choices that ``generation.conditioning.build_request`` completes the prompt with. In every policy the
user's explicit words win (``build_request``'s rules), so they differ only in what fills in the rest:

* ``baseline``: no personalisation: a uniform preference, so a prompt without a genre gets the app's default
  (pop, "the default light pop piano" of SEED.md) at that genre's default tempo and instruments;
* ``federated_dp`` / ``central``: the seed's personalised system, with the global model trained by user-level
  DP-FedAvg or non-privately on pooled logs. The private policies run the code a real device runs: each user has
  a device room (``studio.room.DeviceRoom``, ``DeviceRoomPolicy``) over its own log store and storage, which keeps
  each retrained global prior as the ClientApp would, streams every logged event through its ONNX step and
  conditions the request; ``central`` (a server holding everyone's logs, no device) predicts in a batch. Cold start (``generation.cold_start``): for the first
  ``exploration.interactions`` requests the preference is the questionnaire mixed with the model's population prior
  at that local time, and the main genre is *sampled* from it (exploration mode); from then on the model reads the
  user's own window of events. Tempo and instruments come from the user's recent choices (the questionnaire's
  tempo until there are any). The model is retrained periodically from the loop's logs (``simulations.loop.retraining``);
* ``federated_dp_personal``: ``federated_dp`` with each device's personal logit offset (``model.network.personalise``),
  refit by the device room on the user's own log whenever it keeps a new prior; it never leaves the device;
* ``recent_choices``: no learned model: the heuristic prior alone (``model.features.heuristic_prior``: the genre the prompt
  names, else what the user kept lately), with the user's recent tempo and instruments;
* ``oracle``: knows the hidden taste at the moment of the request: its genre distribution, preferred tempo and the
  instruments the user more likely wants than not. It still cannot know which genre the user has in mind this time.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
import torch

from generation.cold_start import (
    ExplorationConfig, Questionnaire, choose_genre, explored_preference, population_prior, starting_preference,
)
from model.features.encoding import FEATURE_DIM, EventEncoder
from model.features.heuristic_prior import prior_logits
from model.features.recent_choices import RecentChoices, summarise_recent
from model.log.events import Event
from model.log.vocab import GENRES
from model.network.networks import ModelConfig, PreferenceLSTM
from simulations.loop.judging import liked_instruments
from simulations.population.population import SyntheticUser
from studio.room import DeviceRoom, RoomSettings

Arrays = dict[str, np.ndarray]
UNIFORM = np.full(len(GENRES), 1.0 / len(GENRES))
EXPLORE_STREAM = 7


@dataclass(frozen=True)
class RequestContext:
    """What the app knows when a request arrives.

    Attributes:
        user: the user's index in the cohort.
        ts: UTC time of the request.
        utc_offset_min: the user's local offset.
        prompt: the text typed.
        interactions_done: requests of this user completed before this one.
        answers: the user's sign-up questionnaire.
        seed: seeds any randomness of the policy for this request (the same in every policy).
        log: the user's log so far, ending with this request's ``generation_requested`` event.
    """

    user: int
    ts: float
    utc_offset_min: int
    prompt: str
    interactions_done: int
    answers: Questionnaire
    seed: int
    log: Sequence[Event]


@dataclass(frozen=True)
class Conditioning:
    """A policy's answer for one request: what ``build_request`` completes the prompt with."""

    preference: np.ndarray
    recent: RecentChoices
    explored: bool = False


class Retrainer(Protocol):
    def retrain(self, logs: Sequence[Sequence[Event]]) -> tuple[Arrays, str]: ...

    def report(self) -> dict: ...


class Policy(Protocol):
    name: str

    def condition(self, contexts: Sequence[RequestContext]) -> list[Conditioning]: ...

    def retrain(self, logs: Sequence[Sequence[Event]]) -> str | None: ...

    def report(self) -> dict: ...


class BaselinePolicy:
    """Prompt only: nothing learned, nothing remembered."""

    name = "baseline"

    def condition(self, contexts: Sequence[RequestContext]) -> list[Conditioning]:
        return [Conditioning(UNIFORM, RecentChoices()) for _ in contexts]

    def retrain(self, logs: Sequence[Sequence[Event]]) -> str | None:
        return None

    def report(self) -> dict:
        return {}


class RecentChoicesPolicy:
    """The strongest simple rule: the heuristic prior of the request's own features, nothing learned."""

    name = "recent_choices"

    def __init__(self) -> None:
        self._encoders: dict[int, EventEncoder] = {}
        self._read: dict[int, int] = {}

    def condition(self, contexts: Sequence[RequestContext]) -> list[Conditioning]:
        out = []
        for ctx in contexts:
            encoder = self._encoders.setdefault(ctx.user, EventEncoder())
            row = None
            for event in ctx.log[self._read.get(ctx.user, 0):]:
                row = encoder.encode(event)
            self._read[ctx.user] = len(ctx.log)
            logits = prior_logits(torch.from_numpy(row)) if row is not None else torch.zeros(len(GENRES))
            recent = summarise_recent(ctx.log)
            recent = recent if recent.bpm is not None else RecentChoices(ctx.answers.bpm, recent.instruments)
            out.append(Conditioning(torch.softmax(logits, -1).numpy().astype(np.float64), recent))
        return out

    def retrain(self, logs: Sequence[Sequence[Event]]) -> str | None:
        return None

    def report(self) -> dict:
        return {}


class OraclePolicy:
    """Knows each user's hidden taste at the moment of the request (an upper reference, not a system)."""

    name = "oracle"

    def __init__(self, users: Sequence[SyntheticUser]) -> None:
        self.users = users

    def condition(self, contexts: Sequence[RequestContext]) -> list[Conditioning]:
        out = []
        for ctx in contexts:
            taste = self.users[ctx.user].taste_at(ctx.ts)
            recent = RecentChoices(bpm=taste.bpm_mean, instruments=liked_instruments(taste)[:4])
            out.append(Conditioning(np.asarray(taste.genre_probs, dtype=np.float64), recent))
        return out

    def retrain(self, logs: Sequence[Sequence[Event]]) -> str | None:
        return None

    def report(self) -> dict:
        return {}


class ModelPolicy:
    """The personalised system on a server that holds every log (``central``): cold start, then the global model on
    the user's own window in one batch, retrained periodically.

    Args:
        name: "central".
        model_config: architecture of the global model.
        arrays: its pre-trained weights.
        retrainer: how the weights are updated from the loop's logs.
        window: events the model reads (the request included).
        exploration: how many first interactions explore, and how diversely.
        questionnaire_weight: weight of the sign-up answers against the population prior at cold start.
    """

    def __init__(self, name: str, model_config: ModelConfig, arrays: Arrays, retrainer: Retrainer, *, window: int,
                 exploration: ExplorationConfig, questionnaire_weight: float) -> None:
        self.name = name
        self.model = PreferenceLSTM(model_config)
        self._load(arrays)
        self.retrainer = retrainer
        self.window = window
        self.exploration = exploration
        self.questionnaire_weight = questionnaire_weight
        self._rows: dict[int, list[np.ndarray]] = {}
        self._encoders: dict[int, EventEncoder] = {}

    def _load(self, arrays: Arrays) -> None:
        self.model.load_state_dict({k: torch.from_numpy(np.array(v, dtype=np.float32)) for k, v in arrays.items()})
        self.model.eval()

    def _encoded(self, ctx: RequestContext) -> list[np.ndarray]:
        """The user's event features, extended by the events logged since the last request (one row each)."""
        rows = self._rows.setdefault(ctx.user, [])
        encoder = self._encoders.setdefault(ctx.user, EventEncoder())
        rows.extend(encoder.encode(event) for event in ctx.log[len(rows):])
        return rows

    def _predict(self, contexts: Sequence[RequestContext]) -> np.ndarray:
        """Preference distributions ``[B, 8]`` from each user's last ``window`` events, in one batch."""
        x = np.zeros((len(contexts), self.window, FEATURE_DIM), dtype=np.float32)
        lengths = np.zeros(len(contexts), dtype=np.int64)
        for i, ctx in enumerate(contexts):
            recent = self._encoded(ctx)[-self.window:]
            x[i, :len(recent)] = np.stack(recent)
            lengths[i] = len(recent)
        with torch.no_grad():
            logits = self.model(torch.from_numpy(x), torch.from_numpy(lengths))
        return torch.softmax(logits, -1).numpy().astype(np.float64)

    def _cold_start(self, ctx: RequestContext) -> Conditioning:
        prior = population_prior(self.model, ts=ctx.ts, utc_offset_min=ctx.utc_offset_min)
        start = starting_preference(ctx.answers, prior, questionnaire_weight=self.questionnaire_weight)
        choice = choose_genre(start, interactions_done=ctx.interactions_done, config=self.exploration,
                              rng=np.random.default_rng([ctx.seed, EXPLORE_STREAM]))
        return Conditioning(explored_preference(start, choice.genre), self._recent(ctx), explored=choice.explored)

    def _recent(self, ctx: RequestContext) -> RecentChoices:
        recent = summarise_recent(ctx.log)
        return recent if recent.bpm is not None else RecentChoices(ctx.answers.bpm, recent.instruments)

    def condition(self, contexts: Sequence[RequestContext]) -> list[Conditioning]:
        out: list[Conditioning | None] = [None] * len(contexts)
        warm = []
        for i, ctx in enumerate(contexts):
            self._encoded(ctx)  # keep every user's features current, exploring or not
            if ctx.interactions_done < self.exploration.interactions:
                out[i] = self._cold_start(ctx)
            else:
                warm.append(i)
        if warm:
            probs = self._predict([contexts[i] for i in warm])
            for row, i in enumerate(warm):
                out[i] = Conditioning(probs[row], self._recent(contexts[i]))
        return out  # type: ignore[return-value]

    def retrain(self, logs: Sequence[Sequence[Event]]) -> str | None:
        arrays, note = self.retrainer.retrain(logs)
        self._load(arrays)
        return note

    def report(self) -> dict:
        return self.retrainer.report()


def _kept_version(room: DeviceRoom) -> int:
    """The version of the global prior ``room`` holds (0 before its first)."""
    kept = room.preference.kept
    return 0 if kept is None else kept.info.version


class DeviceRoomPolicy:
    """The private policies as real devices run them: one ``DeviceRoom`` per user over its own log store and storage
    (``<root>/user_<id>/``). The app logs each event the loop logs, the room keeps each retrained global prior as
    the ClientApp would (with the personal offset refit on the device when ``personal``), and its conditioning is
    the room's: the prior's ONNX step over the request's window (as the model was trained), the offset, cold start
    and recent choices.

    Args:
        name: "federated_dp" or "federated_dp_personal".
        model_config, arrays: the pre-trained global prior.
        retrainer: how the federation retrains it from the loop's logs.
        root: the folder of the devices' storage.
        window, exploration, questionnaire_weight, personal: the rooms' settings (``studio.room.RoomSettings``).
    """

    def __init__(self, name: str, model_config: ModelConfig, arrays: Arrays, retrainer: Retrainer, *, root: Path,
                 window: int, exploration: ExplorationConfig, questionnaire_weight: float, personal: bool) -> None:
        self.name, self.model_config, self.arrays, self.retrainer = name, model_config, arrays, retrainer
        self.root = Path(root)
        self.settings = RoomSettings(exploration=exploration, questionnaire_weight=questionnaire_weight,
                                     personal=personal, window=window)
        self.version = 1
        self.rooms: dict[int, DeviceRoom] = {}

    def _room(self, ctx: RequestContext) -> DeviceRoom:
        """The user's device: created at their first request and signed up; it receives the current global prior
        when it is next online (a request), as a device receives it with the next message it is sent."""
        room = self.rooms.get(ctx.user)
        if room is None:
            room = DeviceRoom(self.root / f"user_{ctx.user}" / "events.db", settings=self.settings,
                              utc_offset_min=ctx.utc_offset_min)
            room.sign_up(ctx.answers)
            self.rooms[ctx.user] = room
        if _kept_version(room) < self.version:
            room.receive_prior(self.arrays, self.model_config, run_key=self.name, round_number=self.version,
                               message="evaluate")
        return room

    def condition(self, contexts: Sequence[RequestContext]) -> list[Conditioning]:
        out = []
        for ctx in contexts:
            room = self._room(ctx)
            room.log(ctx.log[len(room.events):])  # what the app logged since: ends with this request
            proposal = room.proposal_for_logged_request(seed=ctx.seed)
            out.append(Conditioning(proposal.preference.probs, proposal.recent, explored=proposal.preference.explored))
        return out

    def retrain(self, logs: Sequence[Sequence[Event]]) -> str | None:
        for user, room in self.rooms.items():  # a device logs each event as it happens: the reactions to the
            room.log(logs[user][len(room.events):])  # user's last request are on it before the next prior arrives
        self.arrays, note = self.retrainer.retrain(logs)
        self.version += 1  # each device keeps it (and refits its offset) at its next request
        behind = sum(_kept_version(room) < self.version - 1 for room in self.rooms.values())
        return f"{note}; sent to {len(self.rooms)} device rooms ({behind} had missed an earlier prior while offline)"

    def report(self) -> dict:
        return self.retrainer.report()

    def close(self) -> None:
        for room in self.rooms.values():
            room.close()
