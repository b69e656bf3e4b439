"""The device room: the one object a music app holds per user, over the device's log store and storage folder.

The seed's loop on the device, in the product: behaviour log -> the kept global prior streamed in ONNX Runtime
(``studio.preference``) -> a request that completes the prompt (``generation.conditioning``) -> ACE-Step 1.5
through diffusers' ``AceStepPipeline`` (``generation.acestep_pipeline``; the tiny random-weight pipeline unless
``pipeline_dir`` names real weights) -> a WAV in the device's storage -> the user's reaction -> the log, which the
next federated round trains on (``client.client_app`` reads the same store). Nothing here sends anything: what
leaves the device is the ClientApp's bounded contribution only (``studio.leaving``).

    room = DeviceRoom("events.db", "events.device")
    proposal = room.request("something relaxing")       # the MusicRequest, the pipeline call, and why
    piece = room.generate("something relaxing")         # logs the request, writes the WAV
    room.react(piece.id, "keep")                        # logs segment_kept: one more training example

Storage: ``prior/`` (the kept priors), ``stream/`` (the stream state), ``personal_offset.json``,
``questionnaire.json``, ``audio/`` (the newest ``keep_audio`` pieces), ``pieces/`` (each piece's request, for
reactions), ``tiny-pipeline/`` (built once when no ``pipeline_dir`` is given).
"""

from __future__ import annotations

import dataclasses
import json
import re
import secrets
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from client.log_store import LogStore
from client.received_prior import default_storage
from generation.cold_start import ExplorationConfig, Questionnaire
from generation.conditioning import ConditioningConfig, MusicRequest, build_request
from generation.pipeline_call import music_request_kwargs
from model.device.prior_store import KeptPrior
from model.features.prompt_intent import parse_prompt
from model.features.recent_choices import RecentChoices, summarise_recent
from model.log.events import Event
from model.log.vocab import GENRES, INSTRUMENTS
from model.network.networks import ModelConfig
from storage.atomic import atomic_write_bytes
from studio.preference import DevicePreference, Preference

REACTIONS = ("keep", "redo", "style", "tempo", "instrument")
"""What a user can do with a piece: keep it, redo it, or edit its style, tempo or an instrument."""
PIECE_ID = re.compile(r"\d{6}")
TINY_SOURCE, REAL_SOURCE = "ace-step-1.5-tiny", "ace-step-1.5"
TINY_NOTE = "tiny random-weight ACE-Step 1.5 pipeline: the audio is noise (it proves the pipeline call, not music)"


class RoomError(ValueError):
    """A call the room refuses; the message names the argument, the value and the rule."""


@dataclass(frozen=True)
class RoomSettings:
    """Attributes:
    conditioning: how a request completes the prompt (its ``duration_s`` is the piece's length).
    exploration: cold start: how many first requests explore, and how diversely.
    questionnaire_weight: the sign-up answers against the population prior at cold start.
    personal: fit and apply the personal offset on the device.
    window: events a personalisation example reads (the federation's window).
    num_inference_steps, guidance_scale, shift: the pipeline's sampler (ACE-Step 1.5 turbo: 8 steps).
    keep_audio: newest WAV files kept in the storage (0: all).
    save_every: events between writes of the stream state (replayed from the log after a crash).
    """

    conditioning: ConditioningConfig = ConditioningConfig(duration_s=10.0)
    exploration: ExplorationConfig = ExplorationConfig()
    questionnaire_weight: float = 0.7
    personal: bool = True
    window: int = 32
    num_inference_steps: int = 8
    guidance_scale: float = 7.0
    shift: float = 3.0
    keep_audio: int = 8
    save_every: int = 16


@dataclass(frozen=True)
class Proposal:
    """What the room would ask of ACE-Step for a prompt, and why.

    Attributes:
        request: the ``MusicRequest``.
        call: the ``AceStepPipeline`` keyword arguments (its generator shown as ``{"seed": n}``).
        preference: the predicted genre distribution and where it came from.
        recent: the recent tempo and instruments the request used (when its main genre is the user's habit).
        prompt: what the typed words decided (``model.features.prompt_intent``), by request field.
    """

    request: MusicRequest
    call: dict
    preference: Preference
    recent: RecentChoices
    prompt: dict

    def why(self) -> dict:
        """A JSON-ready account: the distribution, the offset, what came from the prompt and what from the device."""
        r, p = self.request, self.preference
        return {
            "preference": {g: round(float(x), 4) for g, x in zip(GENRES, p.probs)},
            "preference_source": p.source,
            "explored": p.explored,
            "prior": p.prior_version,
            "personal_offset": {g: round(float(x), 4) for g, x in zip(GENRES, p.offset)},
            "genres": {"value": list(r.genres), "weights": [round(w, 4) for w in r.genre_weights],
                       "from": "the prompt" if r.genre_source == "prompt" else "the predicted preference"},
            "bpm": {"value": r.bpm, "from": {"prompt": "the prompt", "history": "your recent tempo",
                                             "genre default": "the genre's default"}[r.bpm_source]},
            "instruments": {"value": list(r.instruments), "typed": [i for i in self.prompt["instruments"]
                                                                    if i in r.instruments],
                            "recent": list(self.recent.instruments)},
            "moods": {"value": list(r.moods), "typed": self.prompt["moods"]},
            "prompt_won": self.prompt,
        }


@dataclass(frozen=True)
class Piece:
    """A generated piece: ``id`` (its WAV's number), the file, its proposal, the pipeline that made it, seconds."""

    id: str
    audio_path: Path
    proposal: Proposal
    source: str
    seconds: float


def _prompt_decisions(prompt: str) -> dict:
    intent = parse_prompt(prompt)
    return {"genres": list(intent.genres), "excluded_genres": list(intent.excluded_genres), "bpm": intent.bpm,
            "tempo": intent.tempo, "keyscale": intent.keyscale, "moods": list(intent.moods),
            "instruments": list(intent.instruments), "excluded_instruments": list(intent.excluded_instruments)}


class DeviceRoom:
    """One user's room on the device (module docstring).

    Args:
        log_db: the device's log store (created if missing), the one its SuperNode trains on.
        storage: the device's storage folder (default: ``<log>.device/`` beside it, where the ClientApp keeps priors).
        settings: ``RoomSettings``.
        pipeline_dir: a diffusers-format ACE-Step 1.5 folder already on the device; None: the tiny pipeline.
        pipeline: an ``AceStepPipeline`` already loaded (shared by several rooms); overrides ``pipeline_dir``.
        utc_offset_min: the user's local offset for new events (default: this machine's).
    """

    def __init__(self, log_db: str | Path, storage: str | Path | None = None, *,
                 settings: RoomSettings = RoomSettings(), pipeline_dir: str | Path | None = None,
                 pipeline: object | None = None, utc_offset_min: int | None = None) -> None:
        self.log_db = Path(log_db)
        self.storage = Path(storage) if storage is not None else default_storage(self.log_db)
        self.settings, self.pipeline_dir, self._pipeline = settings, pipeline_dir, pipeline
        self.utc_offset_min = (time.localtime().tm_gmtoff // 60) if utc_offset_min is None else utc_offset_min
        self.storage.mkdir(parents=True, exist_ok=True)
        self._store = LogStore.open(self.log_db)
        self._events: list[Event] = self._store.events()
        self._generator = None
        self.preference = DevicePreference(self.storage, lambda: self._events, window=settings.window,
                                           exploration=settings.exploration,
                                           questionnaire_weight=settings.questionnaire_weight,
                                           personal=settings.personal, save_every=settings.save_every)

    def close(self) -> None:
        self.preference.close()
        self._store.close()

    def __enter__(self) -> DeviceRoom:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # ------------------------------------------------------------------------------------------------- the log
    @property
    def events(self) -> Sequence[Event]:
        """The events logged so far, oldest first (re-read if another process appended)."""
        self._sync()
        return tuple(self._events)

    def log(self, events: Iterable[Event]) -> list[Event]:
        """Append events to the log store (one transaction) and stream each through the prior; returns them stored."""
        self._sync()
        stored = self._store.append_many(events)
        for event in stored:
            self.preference.observe(event)  # its history is the log before it
            self._events.append(event)
        return stored

    def _sync(self) -> None:
        if self._store.count() != len(self._events):  # another process (the CLI, the app) appended
            self._events = self._store.events()
            self.preference.forget_stream()

    def _now(self, now: float | None) -> float:
        """The time of a new event: the clock, never before the last logged event."""
        t = time.time() if now is None else float(now)
        return max(t, self._events[-1].ts) if self._events else t

    def interactions(self) -> int:
        """Requests the user made so far (cold start counts them)."""
        return sum(1 for e in self._events if e.kind == "generation_requested")

    # --------------------------------------------------------------------------------------------- the prior
    def receive_prior(self, arrays: dict[str, np.ndarray], config: ModelConfig, *, run_key: str, round_number: int,
                      message: str = "train") -> KeptPrior:
        """Keep a global prior (``PriorStore.install``: raises ``PriorRefused``), then refit the personal offset."""
        kept = self.preference.priors.install(arrays, config, run_key=run_key, round_number=round_number,
                                              message=message)
        self.preference.refresh()
        if self.settings.personal:
            self.preference.refit_offset()
        return kept

    def sign_up(self, answers: Questionnaire) -> None:
        """Keep the sign-up questionnaire on the device (cold start mixes it with the population prior)."""
        atomic_write_bytes(self.storage / "questionnaire.json", json.dumps(dataclasses.asdict(answers)).encode())

    def answers(self) -> Questionnaire | None:
        path = self.storage / "questionnaire.json"
        if not path.is_file():
            return None
        values = json.loads(path.read_text())
        return Questionnaire(tuple(values["favourite_genres"]), values["listening_time"], values["tempo"])

    # ------------------------------------------------------------------------------------------ the request
    def recent(self) -> RecentChoices:
        """The user's recent tempo and instruments; the questionnaire's tempo until they chose one."""
        recent = summarise_recent(self._events)
        answers = self.answers()
        return recent if recent.bpm is not None or answers is None else RecentChoices(answers.bpm, recent.instruments)

    def request(self, prompt: str, *, seed: int | None = None, now: float | None = None) -> Proposal:
        """The request and pipeline call for ``prompt`` now, and why; logs nothing.

        Raises:
            RoomError: the prompt is not text of at most 2,000 characters.
        """
        self._sync()
        event = self._request_event(prompt, now)
        return self._propose(event, logged=False, seed=seed, interactions_done=self.interactions())

    def _request_event(self, prompt: str, now: float | None) -> Event:
        from model.log.parsing import EventError
        from client.log_import import canonical

        if not isinstance(prompt, str):
            raise RoomError(f"prompt must be text; found {type(prompt).__name__}.")
        try:
            event, _ = canonical(Event(self._now(now), self.utc_offset_min, "generation_requested", prompt=prompt))
        except EventError as error:
            raise RoomError(f"prompt: {error}") from None
        return event

    def _propose(self, event: Event, *, logged: bool, seed: int | None, interactions_done: int) -> Proposal:
        seed = secrets.randbelow(2**31 - 1) if seed is None else seed
        preference = self.preference.at(event, logged=logged, interactions_done=interactions_done,
                                        answers=self.answers(), seed=seed)
        recent = self.recent()
        request = build_request(preference.probs, event.prompt or "", recent, config=self.settings.conditioning,
                                seed=seed)
        s = self.settings
        call = music_request_kwargs(request, num_inference_steps=s.num_inference_steps,
                                    guidance_scale=s.guidance_scale, shift=s.shift, turbo=self._turbo())
        call["generator"] = {"seed": request.seed}
        return Proposal(request, call, preference, recent, _prompt_decisions(event.prompt or ""))

    def proposal_for_logged_request(self, *, seed: int | None = None) -> Proposal:
        """The proposal for the last logged event, a ``generation_requested`` one (what a simulation's app asks)."""
        self._sync()
        if not self._events or self._events[-1].kind != "generation_requested":
            raise RoomError("the last logged event must be a generation_requested event.")
        return self._propose(self._events[-1], logged=True, seed=seed, interactions_done=self.interactions() - 1)

    # ------------------------------------------------------------------------------------------- generation
    def _turbo(self) -> bool:
        """Whether the pipeline is a turbo checkpoint (guidance distilled), read without loading it."""
        if self._pipeline is not None:
            return bool(self._pipeline.is_turbo)
        if self.pipeline_dir is None:
            return True  # the tiny pipeline is built as a turbo one
        config = Path(self.pipeline_dir) / "transformer" / "config.json"
        return bool(json.loads(config.read_text()).get("is_turbo", False)) if config.is_file() else False

    def pipeline(self):
        """The ACE-Step 1.5 pipeline: the one given, the folder ``pipeline_dir``, or the tiny one (built once)."""
        if self._pipeline is None:
            from generation.acestep_pipeline import load_pipeline

            folder = self.pipeline_dir
            if folder is None:
                folder = self.storage / "tiny-pipeline"
                if not (folder / "model_index.json").is_file():
                    from generation.tiny_pipeline import save_tiny_pipeline

                    save_tiny_pipeline(folder)
            self._pipeline = load_pipeline(folder)
        return self._pipeline

    @property
    def source(self) -> str:
        return REAL_SOURCE if self.pipeline_dir is not None else TINY_SOURCE

    def generate(self, prompt: str, *, seed: int | None = None, now: float | None = None) -> Piece:
        """Log the request, generate its piece through the pipeline and write the WAV in the storage.

        Raises:
            RoomError: a bad prompt (nothing is logged).
        """
        from generation.acestep_pipeline import AceStepPipelineGenerator

        self._sync()
        interactions_done = self.interactions()
        [event] = self.log([self._request_event(prompt, now)])
        proposal = self._propose(event, logged=True, seed=seed, interactions_done=interactions_done)
        if self._generator is None:
            s = self.settings
            self._generator = AceStepPipelineGenerator(self.pipeline(), self.storage / "audio", source=self.source,
                                                       num_inference_steps=s.num_inference_steps,
                                                       guidance_scale=s.guidance_scale, shift=s.shift,
                                                       keep_files=s.keep_audio)
        started = time.perf_counter()
        result = self._generator.generate(proposal.request)
        seconds = time.perf_counter() - started
        piece = Piece(result.audio_path.stem, result.audio_path, proposal, result.source, seconds)
        (self.storage / "pieces").mkdir(exist_ok=True)
        record = {"request": {**dataclasses.asdict(proposal.request), "user_text": ""}, "why": proposal.why(),
                  "call": {k: v for k, v in proposal.call.items() if k not in ("prompt", "lyrics")},
                  "source": piece.source, "seconds": seconds, "reactions": []}
        atomic_write_bytes(self.storage / "pieces" / f"{piece.id}.json", json.dumps(record).encode())
        return piece

    def piece(self, piece_id: str) -> dict:
        """What the room kept of piece ``piece_id`` (its request without the user's words, why, reactions).

        Raises:
            RoomError: not a piece id of this device (six digits of a piece it generated).
        """
        if not isinstance(piece_id, str) or not PIECE_ID.fullmatch(piece_id):
            raise RoomError(f"piece must be a piece id of six digits, e.g. '000001'; found {str(piece_id)[:40]!r}.")
        path = self.storage / "pieces" / f"{piece_id}.json"
        if not path.is_file():
            raise RoomError(f"piece {piece_id} was not generated on this device (no {path.name} in its storage).")
        return json.loads(path.read_text())

    def audio_path(self, piece_id: str) -> Path:
        """The WAV of piece ``piece_id`` (raises ``RoomError`` for an unknown id or a file already removed)."""
        self.piece(piece_id)
        path = self.storage / "audio" / f"{piece_id}.wav"
        if not path.is_file():
            raise RoomError(f"piece {piece_id}'s audio was removed (the device keeps its newest "
                            f"{self.settings.keep_audio} pieces).")
        return path

    # ------------------------------------------------------------------------------------------- reactions
    def react(self, piece_id: str, reaction: str, *, genre: str | None = None, bpm: float | None = None,
              instrument: str | None = None, enabled: bool | None = None, now: float | None = None) -> list[Event]:
        """Log the user's reaction to a piece as events (``model.log.events``), so the next round trains on them.

        ``keep`` / ``redo``: ``segment_kept`` / ``segment_redone`` with the piece's main genre, tempo and instruments;
        ``style`` (``genre``): ``style_chosen``; ``tempo`` (``bpm``): ``bpm_set``; ``instrument`` (``instrument``,
        ``enabled``): ``instrument_toggled``.

        Raises:
            RoomError: an unknown piece or reaction, or a missing or invalid value for it (named, with the rule).
        """
        from model.log.parsing import EventError
        from client.log_import import canonical

        record = self.piece(piece_id)
        request = record["request"]
        t = self._now(now)
        offset = self.utc_offset_min
        instruments = tuple(i for i in request["instruments"] if i in INSTRUMENTS)
        if reaction not in REACTIONS:
            raise RoomError(f"reaction must be one of {list(REACTIONS)}; found {str(reaction)[:40]!r}.")
        needed = {"style": ("genre", genre), "tempo": ("bpm", bpm), "instrument": ("instrument", instrument)}
        if reaction in needed and needed[reaction][1] is None:
            raise RoomError(f"reaction {reaction!r} needs {needed[reaction][0]}=...")
        if reaction == "instrument" and enabled is None:
            raise RoomError("reaction 'instrument' needs enabled=true or enabled=false.")
        event = {
            "keep": lambda: Event(t, offset, "segment_kept", genre=request["genres"][0], bpm=float(request["bpm"]),
                                  instruments=instruments),
            "redo": lambda: Event(t, offset, "segment_redone", genre=request["genres"][0], bpm=float(request["bpm"]),
                                  instruments=instruments),
            "style": lambda: Event(t, offset, "style_chosen", genre=genre),
            "tempo": lambda: Event(t, offset, "bpm_set", bpm=bpm,
                                   direction="up" if (bpm or 0) >= request["bpm"] else "down"),
            "instrument": lambda: Event(t, offset, "instrument_toggled", instrument=instrument, enabled=enabled),
        }[reaction]()
        try:
            canonical(event)
        except EventError as error:
            raise RoomError(f"reaction {reaction!r}: {error}") from None
        stored = self.log([event])
        record["reactions"].append(reaction)
        atomic_write_bytes(self.storage / "pieces" / f"{piece_id}.json", json.dumps(record).encode())
        return stored

    # --------------------------------------------------------------------------------------------- status
    def status(self) -> dict:
        """A JSON-ready summary: the log, the kept prior, the offset, the pieces, the cold start."""
        from client.log_store import log_stats

        self._sync()
        kept = self.preference.refresh()
        stats = log_stats(list(self._events))
        pieces = sorted(p.stem for p in (self.storage / "pieces").glob("*.json")) if (self.storage / "pieces").is_dir() else []
        return {
            "log": {"path": str(self.log_db), "events": stats["events"], "per_kind": stats["per_kind"],
                    "last_time": stats["last_time"], "kept_genres": stats["kept_genres"]},
            "prior": None if kept is None else {
                "run": kept.info.run_key, "round": kept.info.round, "message": kept.info.message,
                "version": kept.info.version, "received_at": kept.info.received_at,
                "model": kept.info.model, "onnx_bytes": kept.onnx_path.stat().st_size},
            "personal_offset": {g: round(float(x), 4) for g, x in zip(GENRES, self.preference.offset())},
            "interactions": self.interactions(),
            "cold_start_until": self.settings.exploration.interactions,
            "questionnaire": None if self.answers() is None else dataclasses.asdict(self.answers()),
            "pieces": pieces,
            "generator": {"source": self.source, "note": TINY_NOTE if self.source == TINY_SOURCE else
                          f"ACE-Step 1.5 weights from {self.pipeline_dir}"},
            "storage": str(self.storage),
        }
