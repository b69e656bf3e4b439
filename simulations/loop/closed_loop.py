"""The closed loop: new users ask for music day after day, a policy conditions generation, their taste judges it.

One request, as SEED.md's loop describes it:

1. the user types a prompt of their own (``simulations.loop.user.draw_prompt``: vague, a mood, or naming the genre
   they have in mind, which is drawn from their hidden taste at that moment);
2. the policy completes it into a request (``simulations.loop.policies`` + ``generation.conditioning.build_request``);
3. the *simulated* generator (``simulations.loop.simulated_generator.SimulatedGenerator``) says what ACE-Step would play,
   with tag-adherence noise; with a pipeline generation mode (``simulations.loop.generation``) ACE-Step
   1.5's pipeline also writes the piece as audio on the device, but the listener still reacts to the descriptor;
4. the user's hidden taste judges the piece (``simulations.loop.judging``); satisfied (or settling, or out of
   attempts) they keep it, otherwise they redo it after editing style, tempo or instruments
   (``simulations.loop.user.choose_edits``). Every action is an event in their log, which is what the model reads
   and retrains on. Attempts are bounded (``behaviour.max_attempts``), so edits are too.

Day 0 is each user's sign-up day; on later days a user opens the app with a probability that grows with the
running mean of their request experience (``loop_user.return_probability``).

Same users, same seeds for every policy: each user's schedule on a day, and each request's want, prompt, judging
draws and generation noise come from streams keyed by (loop seed, user, day or request number), never by policy,
so policies differ only through what they generate and what that makes users do. Requests of all users are
played in lock-step (the k-th request of the day of every user together) so a model policy predicts for all of
them in one batch.
"""

from __future__ import annotations

import dataclasses
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TextIO

import numpy as np

from generation.cold_start import Questionnaire
from generation.conditioning import ACE_BPM_MAX, ACE_BPM_MIN, MusicRequest, build_request
from generation.generators import Generator
from model.features.prompt_intent import parse_prompt
from model.log.events import Event
from model.log.vocab import GENRE_INDEX, GENRES
from simulations.loop.judging import judge, mood_match
from simulations.loop.loop_records import LoopRecords, RequestRecord
from simulations.loop.experiment_settings import LoopSettings
from simulations.loop.simulated_generator import SimulatedGenerator
from simulations.loop.user import (
    SECONDS_PER_DAY,
    Edits,
    Habits,
    choose_edits,
    day_request_times,
    draw_habits,
    draw_prompt,
    draw_want,
    questionnaire_answers,
    request_experience,
    return_probability,
)
from simulations.loop.policies import Conditioning, Policy, RequestContext
from simulations.population.population import Population, PopulationConfig, SyntheticUser
from simulations.population.taste import Taste
from simulations.population.world import World

HABITS_STREAM, SCHEDULE_STREAM, REQUEST_STREAM = 11, 12, 13
"""Purposes of the loop's per-user streams ``[seed, user_id, purpose, ...]`` (the population uses 0-2)."""
POLICY_SEED = 1000
"""The ``attempt`` slot of ``request_seed`` that seeds a policy's own randomness (exploration) for a request."""


@dataclass(frozen=True)
class Cohort:
    """The experiment's new users, shared by every policy.

    Attributes:
        users: the synthetic users.
        habits: each user's listening peaks.
        answers: each user's sign-up questionnaire.
        signup_midnight_ts: local midnight of day 0 (as UTC seconds of the same wall-clock time).
    """

    users: list[SyntheticUser]
    habits: list[Habits]
    answers: list[Questionnaire]
    signup_midnight_ts: int


def build_cohort(population_seed: int, first_user_id: int, size: int, days: int, loop_seed: int,
                 world: World = World()) -> Cohort:
    """Users ``first_user_id .. first_user_id + size - 1`` of the population of ``world``, with habits and sign-up
    answers."""
    config = PopulationConfig(seed=population_seed, num_users=first_user_id + size, days=days, world=world)
    population = Population(config)
    users = [population.user(first_user_id + i) for i in range(size)]
    habits = [draw_habits(np.random.default_rng([loop_seed, u.user_id, HABITS_STREAM])) for u in users]
    answers = [questionnaire_answers(u, h, config.start_ts) for u, h in zip(users, habits)]
    return Cohort(users, habits, answers, config.start_ts)


def request_seed(loop_seed: int, user_id: int, number: int, attempt: int) -> int:
    """The generation seed of one attempt of one request (the same in every policy): a cheap integer mix."""
    return (((loop_seed * 1_000_003 + user_id) * 1_000_003 + number) * 1_009 + attempt) % 0x7FFFFFFF


def edited_request(conditioning: Conditioning, prompt: str, edits: Edits, settings: LoopSettings,
                   seed: int) -> MusicRequest:
    """The request after the user's edits: a chosen style wins like a typed genre, a set tempo and switched
    instruments override the completed request."""
    preference = conditioning.preference
    if edits.style is not None:
        preference = np.zeros(len(GENRES))
        preference[GENRE_INDEX[edits.style]] = 1.0
    request = build_request(preference, prompt, conditioning.recent, config=settings.conditioning, seed=seed)
    if edits.style is not None and request.main_genre != edits.style:
        request = dataclasses.replace(request, genres=(edits.style,), genre_weights=(1.0,))
    if edits.bpm is not None:
        request = dataclasses.replace(request, bpm=int(round(min(max(edits.bpm, ACE_BPM_MIN), ACE_BPM_MAX))))
    instruments = list(request.instruments)
    for name, enabled in edits.toggles:
        if enabled and name not in instruments:
            instruments.insert(0, name)
        elif not enabled and name in instruments:
            instruments.remove(name)
    return dataclasses.replace(request, instruments=tuple(instruments[: settings.conditioning.max_instruments]))


@dataclass(frozen=True)
class _Pending:
    """A request between the prompt and the policy's answer: what the user has in mind stays hidden here."""

    context: RequestContext
    taste: Taste
    want: str
    kind: str
    rng: np.random.Generator


class _UserState:
    """One user's log and running experience while a policy serves them."""

    def __init__(self, pivot: float) -> None:
        self.log: list[Event] = []
        self.requests = 0
        self.experience = pivot


class ClosedLoop:
    """Runs one policy over the cohort for ``settings.days`` days; returns the loop's records."""

    def __init__(self, cohort: Cohort, settings: LoopSettings, *, stream: TextIO = sys.stdout) -> None:
        self.cohort, self.settings, self.stream = cohort, settings, stream

    def run(self, policy: Policy, device_generator: Callable[[int], Generator] | None = None) -> LoopRecords:
        """Serve the cohort with ``policy``; ``device_generator(user_id)`` is that user's device's generator (by
        default one ``SimulatedGenerator`` for all). Every generator must return a descriptor to judge."""
        settings, cohort = self.settings, self.cohort
        n = len(cohort.users)
        states = [_UserState(settings.behaviour.return_pivot) for _ in range(n)]
        records = LoopRecords(users=n, days=settings.days)
        simulated = SimulatedGenerator(settings.noise, seed=settings.seed)
        generator_for = device_generator or (lambda user_id: simulated)
        started = time.perf_counter()
        for day in range(settings.days):
            plans = [self._plan_day(i, day, states[i]) for i in range(n)]
            for i, times in enumerate(plans):
                records.visited[i, day] = bool(times)
            for k in range(max((len(t) for t in plans), default=0)):
                active = [i for i in range(n) if len(plans[i]) > k]
                pending = [self._open_request(i, plans[i][k], states[i]) for i in active]
                conditionings = policy.condition([p.context for p in pending])
                for request, conditioning in zip(pending, conditionings):
                    generator = generator_for(cohort.users[request.context.user].user_id)
                    records.add(self._play(request, conditioning, states[request.context.user], generator, day))
            note = None
            every = settings.retrain.every_days
            if every and (day + 1) % every == 0 and day < settings.days - 1:
                note = policy.retrain([s.log for s in states])
            self._progress(policy.name, day, records, started, note)
        return records

    def _plan_day(self, i: int, day: int, state: _UserState) -> list[int]:
        """UTC times of the user's requests on ``day`` (none when they do not open the app)."""
        user = self.cohort.users[i]
        rng = np.random.default_rng([self.settings.seed, user.user_id, SCHEDULE_STREAM, day])
        comes_back = rng.random() < return_probability(state.experience, self.settings.behaviour)
        if day > 0 and not comes_back:
            return []
        midnight = self.cohort.signup_midnight_ts + day * SECONDS_PER_DAY
        return day_request_times(rng, self.cohort.habits[i], midnight, user.utc_offset_min, self.settings.behaviour)

    def _open_request(self, i: int, planned_ts: int, state: _UserState) -> _Pending:
        """The user's want and prompt; the prompt goes into the log, the context is what the policy sees."""
        user = self.cohort.users[i]
        rng = np.random.default_rng([self.settings.seed, user.user_id, REQUEST_STREAM, state.requests])
        ts = float(planned_ts if not state.log else max(planned_ts, state.log[-1].ts + 30))
        taste = user.taste_at(ts)
        want = draw_want(rng, taste)
        kind, prompt = draw_prompt(rng, want, user.world)
        state.log.append(Event(ts, user.utc_offset_min, "generation_requested", prompt=prompt))
        context = RequestContext(user=i, ts=ts, utc_offset_min=user.utc_offset_min, prompt=prompt,
                                 interactions_done=state.requests, answers=self.cohort.answers[i],
                                 seed=request_seed(self.settings.seed, user.user_id, state.requests, POLICY_SEED),
                                 log=state.log)
        return _Pending(context, taste, want, kind, rng)

    def _play(self, pending: _Pending, conditioning: Conditioning, state: _UserState,
              generator: Generator, day: int) -> RequestRecord:
        """Generate, judge, edit and redo until the user keeps a piece; log every action."""
        ctx, taste, want, kind, rng = pending.context, pending.taste, pending.want, pending.kind, pending.rng
        settings, user = self.settings, self.cohort.users[ctx.user]
        typed = parse_prompt(ctx.prompt).genres
        ts, edits, edit_count, redos = ctx.ts, Edits(), 0, 0
        first = None
        for attempt in range(settings.behaviour.max_attempts):
            seed = request_seed(settings.seed, user.user_id, state.requests, attempt)
            if attempt == 0:
                request = build_request(conditioning.preference, ctx.prompt, conditioning.recent,
                                        config=settings.conditioning, seed=seed)
                honoured = None if not typed else request.main_genre == typed[0]
            else:
                request = edited_request(conditioning, ctx.prompt, edits, settings, seed)
            result = generator.generate(request)
            if result.descriptor is None:
                raise RuntimeError(f"the experiment judges simulated descriptors; {result.source!r} gave none.")
            piece = result.descriptor
            judgement = judge(piece, taste, want, settings.judge)
            if first is None:
                first = (judgement, mood_match(piece, taste, settings.judge), request.main_genre)
            last = attempt == settings.behaviour.max_attempts - 1
            keep = judgement.satisfied or last or rng.random() < settings.behaviour.settle_prob
            ts += float(rng.integers(20, 120))
            state.log.append(Event(ts, user.utc_offset_min, "segment_kept" if keep else "segment_redone",
                                   genre=piece.main_genre, bpm=round(piece.bpm, 1), instruments=piece.instruments))
            if keep:
                break
            redos += 1
            for action in choose_edits(rng, judgement, piece, taste, want, edits):
                ts += float(rng.integers(2, 12))
                state.log.append(Event(ts, user.utc_offset_min, action.kind, genre=action.genre, bpm=action.bpm,
                                       direction=action.direction, instrument=action.instrument,
                                       enabled=action.enabled))
                edit_count += 1
        state.requests += 1
        edits_total = redos + edit_count
        state.experience += settings.behaviour.ema_alpha * (
            request_experience(judgement.satisfaction, edits_total, settings.behaviour) - state.experience)
        first_judgement, first_mood, main_genre = first  # type: ignore[misc]
        return RequestRecord(
            user=ctx.user, day=day, interaction=ctx.interactions_done, prompt_kind=kind,
            first_satisfaction=first_judgement.satisfaction, first_satisfied=first_judgement.satisfied,
            first_genre_match=first_judgement.genre, mood_match=first_mood, edits=edits_total, redos=redos,
            kept_satisfaction=judgement.satisfaction, explored=conditioning.explored, typed_genre_honoured=honoured,
        )

    def _progress(self, name: str, day: int, records: LoopRecords, started: float, note: str | None) -> None:
        summary = records.running_summary()
        line = (f"[{name}] day {day + 1}/{self.settings.days} · {int(records.visited[:, day].sum())} users active · "
                f"{summary['requests']} requests · first-gen satisfied {summary['first_satisfaction']:.3f} · "
                f"edits {summary['edits']:.2f} · {time.perf_counter() - started:.0f} s")
        print(line, file=self.stream, flush=True)
        if note:
            print(f"[{name}]   retrained: {note}", file=self.stream, flush=True)
