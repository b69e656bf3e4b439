"""The device room: the kept prior and the user's own log decide the request for the same words; generation writes
a WAV through diffusers' AceStepPipeline (tiny random weights) and logs the request; reactions are log events."""

from __future__ import annotations

import shutil
import time
import wave

import numpy as np
import pytest
import torch

from generation.cold_start import Questionnaire
from model.features import examples as encoding_examples
from model.features.encoding import encode_events
from model.network.networks import PreferenceLSTM
from studio.room import DeviceRoom, RoomError, RoomSettings
from tests.helpers import CALM_ACOUSTIC, CLUB, PRIOR_MODEL, listener_log, warm

START = time.time() - 30 * 86_400


def _room(tmp_path, warm_storage, prior_arrays, taste=CALM_ACOUSTIC, **settings) -> DeviceRoom:
    """A room of ``taste``'s listener (``warm_storage`` and ``prior_arrays``: tests/conftest.py)."""
    storage = tmp_path / f"{taste[0][0]}.device"
    warm(storage, warm_storage)
    room = DeviceRoom(tmp_path / f"{taste[0][0]}.db", storage, settings=RoomSettings(**settings), utc_offset_min=60)
    room.log(listener_log(taste, start=START))
    room.receive_prior(prior_arrays, PRIOR_MODEL, run_key="run", round_number=2)
    return room


def test_a_calm_acoustic_listener_gets_a_calmer_request_than_a_club_listener_for_the_same_words(
        tmp_path, warm_storage, prior_arrays):
    calm = _room(tmp_path, warm_storage, prior_arrays, CALM_ACOUSTIC).request("something relaxing", seed=1)
    club = _room(tmp_path, warm_storage, prior_arrays, CLUB).request("something relaxing", seed=1)
    assert set(calm.request.genres) <= {"folk", "classical"} and club.request.main_genre == "electronic"
    assert calm.request.bpm < club.request.bpm and calm.request.bpm == 72
    assert "acoustic_guitar" in calm.request.instruments and "synth" in club.request.instruments
    why = calm.why()
    assert why["preference_source"] == "global prior + personal offset" and why["prior"] == "run v1"
    assert why["genres"]["from"] == "the predicted preference" and why["bpm"]["from"] == "your recent tempo"
    assert why["prompt_won"]["moods"] == ["relaxing"] and calm.call["bpm"] == 72
    assert calm.call["prompt"].startswith("Relaxing") and calm.call["generator"] == {"seed": 1}


def test_words_the_user_typed_win_over_the_prior(tmp_path, warm_storage, prior_arrays):
    proposal = _room(tmp_path, warm_storage, prior_arrays, CLUB).request("slow jazz with piano at 80 bpm", seed=2)
    assert proposal.request.genres == ("jazz",) and proposal.request.bpm == 80
    assert proposal.why()["genres"]["from"] == "the prompt" and proposal.why()["prompt_won"]["bpm"] == 80


def test_the_device_predicts_what_the_model_was_trained_on_the_requests_window(tmp_path, warm_storage, prior_arrays):
    """The kept prior streamed in ONNX Runtime gives the request's training example's prediction: the model over the
    last ``window`` events (their rows encoded with the whole log before them), not over the whole history."""
    room = _room(tmp_path, warm_storage, prior_arrays, personal=False, window=4)  # short: the history visibly matters
    torch.manual_seed(1)
    reading = PreferenceLSTM(PRIOR_MODEL)
    with torch.no_grad():  # an untrained residual head ignores the LSTM: give it weights on the LSTM's features
        reading.head.weight.normal_(0.0, 1.0)
    room.receive_prior({k: v.numpy().copy() for k, v in reading.state_dict().items()}, PRIOR_MODEL, run_key="run",
                       round_number=3)
    proposal = room.request("something relaxing", seed=3)
    model = room.preference.model()
    events = [*room.events, room._request_event("something relaxing", None)]
    window = room.settings.window
    assert len(events) > window  # a log longer than the window: the whole history gives another prediction
    rows = torch.from_numpy(encode_events(events)).unsqueeze(0)  # each row encoded with the whole log before it
    with torch.no_grad():  # as model.features.examples.windows cuts a training example: the last rows, request last
        expected = torch.softmax(model(rows[:, -window:], torch.tensor([window])), -1)[0].numpy()
        whole = torch.softmax(model(rows, torch.tensor([len(events)])), -1)[0].numpy()
    np.testing.assert_allclose(proposal.preference.probs, expected, atol=1e-5)
    assert np.max(np.abs(whole - expected)) > 1e-3
    assert proposal.why()["preference_source"] == "global prior"


def test_a_new_user_starts_from_the_questionnaire_and_explores(tmp_path, warm_storage, prior_arrays):
    storage = tmp_path / "new.device"
    shutil.copytree(warm_storage / "prior" / "graphs", storage / "prior" / "graphs")
    room = DeviceRoom(tmp_path / "new.db", storage, utc_offset_min=60)
    first = room.request("something", seed=4)
    assert first.preference.source == "cold start" and first.preference.prior_version is None
    room.sign_up(Questionnaire(("jazz",), "evening", "slow"))
    room.receive_prior(prior_arrays, PRIOR_MODEL, run_key="run", round_number=1)
    with_answers = room.request("something", seed=4)
    assert with_answers.preference.explored and with_answers.request.bpm_source == "history"  # the answers' tempo
    assert with_answers.request.bpm == 76  # the questionnaire's "slow", until the user sets a tempo


def test_generate_writes_the_wav_logs_the_request_and_a_keep_is_one_more_training_example(
        tmp_path, warm_storage, prior_arrays):
    room = _room(tmp_path, warm_storage, prior_arrays)
    before = len(encoding_examples.build_examples(list(room.events), 32))
    piece = room.generate("something relaxing", seed=5)
    with wave.open(str(piece.audio_path)) as wav:
        assert (wav.getnchannels(), wav.getframerate()) == (2, 48_000)
        assert wav.getnframes() / 48_000 == pytest.approx(10.0, abs=0.5)
    assert room.events[-1].kind == "generation_requested" and room.events[-1].prompt == "something relaxing"
    assert piece.source == "ace-step-1.5-tiny" and room.status()["generator"]["note"].startswith("tiny")
    [kept] = room.react(piece.id, "keep")
    assert (kept.kind, kept.genre, kept.bpm) == ("segment_kept", piece.proposal.request.main_genre,
                                                 piece.proposal.request.bpm)
    assert len(encoding_examples.build_examples(list(room.events), 32)) == before + 1
    assert room.piece(piece.id)["reactions"] == ["keep"] and room.audio_path(piece.id) == piece.audio_path


def test_edits_are_logged_as_the_log_formats_events(tmp_path, warm_storage, prior_arrays):
    room = _room(tmp_path, warm_storage, prior_arrays)
    piece = room.generate("something", seed=6)
    kinds = [room.react(piece.id, "redo")[0].kind, room.react(piece.id, "style", genre="jazz")[0].kind,
             room.react(piece.id, "tempo", bpm=60)[0].kind,
             room.react(piece.id, "instrument", instrument="piano", enabled=True)[0].kind]
    assert kinds == ["segment_redone", "style_chosen", "bpm_set", "instrument_toggled"]
    assert room.events[-2].direction == "down"


@pytest.fixture(scope="module")
def generated(tmp_path_factory, warm_storage, prior_arrays):
    """A room and the id of a piece it generated, built once: each refusal below leaves both as they were (checked)."""
    room = _room(tmp_path_factory.mktemp("refusals"), warm_storage, prior_arrays)
    return room, room.generate("something", seed=7).id


@pytest.mark.parametrize("call, message", [
    (lambda room, piece: room.react("../../etc/passwd", "keep"), "six digits"),
    (lambda room, piece: room.react("999999", "keep"), "was not generated on this device"),
    (lambda room, piece: room.react(piece, "love"), "reaction must be one of"),
    (lambda room, piece: room.react(piece, "style"), "needs genre"),
    (lambda room, piece: room.react(piece, "style", genre="Jazz"), "Did you mean 'jazz'"),
    (lambda room, piece: room.react(piece, "tempo", bpm=900), "BPM must be a number between 20 and 300"),
    (lambda room, piece: room.request("x" * 2001), "prompt"),
])
def test_bad_input_is_refused_naming_the_value_and_the_rule(generated, call, message):
    room, piece = generated
    count, reactions = len(room.events), room.piece(piece)["reactions"]
    with pytest.raises(RoomError, match=message):
        call(room, piece)
    assert len(room.events) == count and room.piece(piece)["reactions"] == reactions  # nothing logged


def test_events_another_process_logged_are_read_before_the_next_request(tmp_path, warm_storage, prior_arrays):
    room = _room(tmp_path, warm_storage, prior_arrays, CALM_ACOUSTIC)
    room.request("something", seed=8)
    with DeviceRoom(room.log_db, room.storage, utc_offset_min=60) as other:  # e.g. the CLI while the studio runs
        other.log(listener_log(CLUB, start=time.time() - 5 * 86_400, sessions=5))
    fresh = DeviceRoom(room.log_db, room.storage, utc_offset_min=60)
    np.testing.assert_allclose(room.request("something", seed=8).preference.probs,
                               fresh.request("something", seed=8).preference.probs, atol=1e-6)
