"""Our requests drive diffusers' own AceStepPipeline (tiny random weights, offline): values, types, audio, folders."""

from __future__ import annotations

import shutil
import wave
from dataclasses import replace

import numpy as np
import pytest

from generation.acestep_pipeline import AceStepPipelineGenerator, PipelineUnavailable, load_pipeline
from generation.acestep_requests import AceStep15Request, to_v15
from generation.conditioning import build_request
from generation.generators import Generator
from generation.pipeline_call import music_request_kwargs, pipeline_kwargs
from generation.pipeline_folder import missing_parts
from generation.tiny_pipeline import build_tiny_pipeline, save_tiny_pipeline
from model.features.recent_choices import RecentChoices
from model.log.vocab import GENRES
from simulations.loop.closed_loop import Edits, edited_request
from simulations.loop.policies import Conditioning
from simulations.loop.experiment_settings import LoopSettings

DURATION = 10.0  # ACE-Step 1.5's shortest piece


def preference(genre: str) -> np.ndarray:
    probs = np.full(len(GENRES), 0.02)
    probs[GENRES.index(genre)] = 0.86
    return probs


@pytest.fixture(scope="session")
def tiny_folder(tmp_path_factory):
    """The tiny pipeline written once per test session as a diffusers folder."""
    return save_tiny_pipeline(tmp_path_factory.mktemp("acestep") / "tiny")


@pytest.fixture(scope="session")
def pipeline(tiny_folder):
    """Loaded as real weights are: from the folder, local files only."""
    return load_pipeline(tiny_folder)


@pytest.fixture
def encoded_text(pipeline, monkeypatch):
    """Every (text, lyrics) pair the pipeline formats for its text encoder, as the calls made it."""
    seen = []
    original = pipeline._format_prompt

    def spy(*args, **kwargs):
        seen.append(original(*args, **kwargs))
        return seen[-1]

    monkeypatch.setattr(pipeline, "_format_prompt", spy)
    return seen


def _request(prompt: str = "jazz in A minor at 84 bpm", genre: str = "jazz", seed: int = 7):
    return build_request(preference(genre), prompt, config=replace(LoopSettings().conditioning, duration_s=DURATION),
                         seed=seed)


def test_our_values_arrive_in_the_text_the_pipeline_encodes(pipeline, encoded_text):
    request = _request()
    kwargs = music_request_kwargs(request, num_inference_steps=2, guidance_scale=7.0, shift=3.0, turbo=True)
    pipeline(**kwargs)
    (text, lyrics), = encoded_text
    caption = to_v15(request).caption
    assert f"# Caption\n{caption}\n" in text and "jazz" in caption.lower()
    assert "- bpm: 84\n" in text and "- keyscale: A minor\n" in text and "- duration: 10 seconds\n" in text
    assert "- timesignature: N/A\n" in text  # we never set one from a request
    assert lyrics.endswith("# Lyric\n[Instrumental]<|endoftext|>")  # no lyrics: ACE-Step 1.5's instrumental marker

    encoded_text.clear()
    fields = AceStep15Request(caption="Waltz with strings.", bpm=90, duration=12.0, timesignature="3", seed=1,
                              lyrics="[verse]\nla la", instrumental=False, inference_steps=1)
    pipeline(**pipeline_kwargs(fields, turbo=True))
    (text, lyrics), = encoded_text
    assert "- timesignature: 3\n" in text and "- bpm: 90\n" in text and "- duration: 12 seconds\n" in text
    assert "[verse]\nla la" in lyrics


def test_the_pipeline_raises_on_wrong_types_and_our_adapter_never_sends_them(pipeline):
    base = pipeline_kwargs(AceStep15Request(caption="Calm folk.", bpm=80, duration=DURATION, inference_steps=1,
                                            seed=0, timesignature="4"), turbo=True)
    with pytest.raises(AttributeError):  # it calls .strip() on the time signature
        pipeline(**{**base, "timesignature": 4})
    with pytest.raises(TypeError):  # it compares bpm with 0
        pipeline(**{**base, "bpm": "80"})
    with pytest.raises(IndexError):  # it indexes one lyrics per prompt
        pipeline(**{**base, "prompt": ["Calm folk.", "Loud rock."], "lyrics": "la"})

    conditioning = Conditioning(preference=preference("rock"), recent=RecentChoices(bpm=131.6, instruments=("bass",)))
    prompts = [("", "pop"), ("something fast", "rock"), ("slow piano at 61.5 bpm", "classical"),
               ("no rock, jazz please", "rock"), ("in C major", "folk")]
    requests = [_request(prompt, genre, seed) for seed, (prompt, genre) in enumerate(prompts)]
    requests.append(edited_request(conditioning, "", Edits(style="hiphop", bpm=97.4), LoopSettings(), seed=9))
    for request in requests:
        kwargs = music_request_kwargs(request, num_inference_steps=1, guidance_scale=7.0, shift=3.0, turbo=True)
        assert type(kwargs["bpm"]) is int and type(kwargs["prompt"]) is str and type(kwargs["lyrics"]) is str
        assert kwargs["timesignature"] is None or type(kwargs["timesignature"]) is str
        assert kwargs["keyscale"] is None or type(kwargs["keyscale"]) is str
    for request in requests[:2]:  # and the pipeline takes them
        kwargs = music_request_kwargs(request, num_inference_steps=1, guidance_scale=7.0, shift=3.0, turbo=True)
        assert pipeline(**kwargs).audios.shape == (1, 2, int(DURATION * pipeline.sample_rate))
    with pytest.raises(TypeError, match="bpm must be an integer"):
        AceStep15Request(caption="Calm folk.", bpm=80.0)
    with pytest.raises(ValueError, match=r"timesignature must be one of \['', '2', '3', '4', '6'\]. Found '4/4'"):
        AceStep15Request(caption="Calm folk.", timesignature="4/4")


def test_the_generator_writes_a_wav_on_the_device_and_keeps_the_newest(pipeline, tmp_path):
    storage = tmp_path / "device" / "audio"
    generator = AceStepPipelineGenerator(pipeline, storage, source="ace-step-1.5-tiny", keep_files=2)
    assert isinstance(generator, Generator)
    results = [generator.generate(_request(seed=s)) for s in (1, 2, 1)]
    assert [r.audio_path.name for r in results] == ["000001.wav", "000002.wav", "000003.wav"]
    assert sorted(p.name for p in storage.iterdir()) == ["000002.wav", "000003.wav"]
    assert all(r.source == "ace-step-1.5-tiny" and not r.is_simulated for r in results)
    with wave.open(str(results[-1].audio_path)) as audio:
        assert (audio.getnchannels(), audio.getsampwidth(), audio.getframerate()) == (2, 2, 48_000)
        assert audio.getnframes() == int(DURATION * 48_000)
    same_seed = results[2].audio_path.read_bytes()
    assert same_seed != results[1].audio_path.read_bytes()  # another seed, other noise
    assert same_seed == generator.generate(_request(seed=1)).audio_path.read_bytes()  # the seed decides the audio


def test_the_saved_folder_loads_back_to_the_same_pipeline(pipeline):
    kwargs = pipeline_kwargs(AceStep15Request(caption="Calm folk.", bpm=80, duration=DURATION, seed=3,
                                              inference_steps=2), turbo=True)
    built = build_tiny_pipeline(seed=0)
    built.set_progress_bar_config(disable=True)
    np.testing.assert_allclose(pipeline(**kwargs).audios, built(**pipeline_kwargs(
        AceStep15Request(caption="Calm folk.", bpm=80, duration=DURATION, seed=3, inference_steps=2), turbo=True
    )).audios, atol=1e-6)


def test_a_missing_or_incomplete_folder_is_refused_naming_each_missing_part(tiny_folder, tmp_path):
    assert missing_parts(tiny_folder) == []
    broken = shutil.copytree(tiny_folder, tmp_path / "broken")
    for weights in (broken / "vae").glob("*.safetensors"):
        weights.unlink()
    (broken / "scheduler" / "scheduler_config.json").unlink()
    shutil.rmtree(broken / "tokenizer")
    assert missing_parts(broken) == ["vae/ weights (*.safetensors or *.bin)", "tokenizer/ (no such folder)",
                                     "scheduler/scheduler_config.json"]
    with pytest.raises(PipelineUnavailable, match=r"Missing: vae/ weights .*; tokenizer/ \(no such folder\); "
                                                  r"scheduler/scheduler_config.json. Nothing is downloaded"):
        load_pipeline(broken)
    assert missing_parts(tmp_path / "nowhere") == [f"{tmp_path / 'nowhere'} (no such folder)"]
    (broken / "model_index.json").unlink()
    assert missing_parts(broken)[0] == "model_index.json"
