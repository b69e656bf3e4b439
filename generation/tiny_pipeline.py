"""A tiny ACE-Step 1.5 pipeline with random weights, built from code: diffusers' own ``AceStepPipeline``, offline.

Every component is the class a real ACE-Step 1.5 folder holds (``AceStepTransformer1DModel``,
``AceStepConditionEncoder``, ``AutoencoderOobleck``, ``transformers.Qwen3Model``, a fast tokenizer,
``FlowMatchEulerDiscreteScheduler``), at a few thousand parameters each, so the whole pipeline code path
(prompt formatting, tokenising, text encoding, condition encoding, the flow-matching loop, VAE decoding to 48 kHz
stereo) runs in well under a second per 10 s piece on a CPU. The tokenizer is a byte-level BPE trained here on our own
vocabulary and the pipeline's prompt template, in place of Qwen3's (which would have to be downloaded).

The weights are random: **the audio is noise**. It proves the plumbing, never the music.
``save_tiny_pipeline`` writes it as a diffusers folder, which ``generation.acestep_pipeline.load_pipeline`` loads
exactly as it loads real weights.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import torch
from diffusers import AceStepPipeline, AutoencoderOobleck, FlowMatchEulerDiscreteScheduler
from diffusers.models.transformers.ace_step_transformer import AceStepTransformer1DModel
from diffusers.pipelines.ace_step import AceStepConditionEncoder
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast, Qwen3Config, Qwen3Model

from generation.acestep_pipeline import WEIGHT_NORM_WARNING
from generation.conditioning import ENERGY_MOODS, GENRE_DEFAULT_INSTRUMENTS
from model.log.vocab import GENRES, INSTRUMENTS

END_OF_TEXT = "<|endoftext|>"
HIDDEN = 32
LATENT = 8
"""Acoustic latent channels: the transformer reads noise, context and source latents side by side (3 x LATENT)."""
DOWNSAMPLING = [2, 4, 4, 6, 10]
"""The VAE's strides: 1,920 samples per latent frame, ACE-Step 1.5's 25 latent frames per second at 48 kHz."""
SAMPLE_RATE = 48_000
ATTENTION = {"num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 8}


def _corpus() -> list[str]:
    """Text like what the pipeline will tokenise: its prompt template, metadata lines, our captions and tags."""
    moods = [mood for _, names in ENERGY_MOODS for mood in names]
    words = [*GENRES, *(name.replace("_", " ") for name in INSTRUMENTS), *moods]
    lines = ["# Instruction", "Fill the audio semantic mask based on the given conditions:", "# Caption", "# Metas",
             "# Languages", "# Lyric", "en", "N/A", "C major", "A minor", "[Instrumental]"]
    lines += [f"- bpm: {bpm}\n- timesignature: {ts}\n- keyscale: N/A\n- duration: {bpm % 50 + 10} seconds"
              for bpm, ts in zip(range(30, 301, 3), "2346" * 30)]
    for genre, instruments in GENRE_DEFAULT_INSTRUMENTS.items():
        for mood in moods:
            lines.append(f"{mood.capitalize()} {genre} with {', '.join(instruments[:-1])} and {instruments[-1]}.")
    return lines + [" ".join(words[i:i + 5]) for i in range(len(words))]


def tiny_tokenizer(vocab_size: int = 512) -> PreTrainedTokenizerFast:
    """A byte-level BPE (any text tokenises) trained on ``_corpus``, with Qwen's end-of-text as eos and padding."""
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[END_OF_TEXT], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    bpe.train_from_iterator(_corpus(), trainer)
    return PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token=END_OF_TEXT, pad_token=END_OF_TEXT)


def build_tiny_pipeline(seed: int = 0) -> AceStepPipeline:
    """The tiny random-weight pipeline (turbo: 8 steps, no classifier-free guidance), weights drawn from ``seed``."""
    tokenizer = tiny_tokenizer()
    torch.manual_seed(seed)
    text_encoder = Qwen3Model(Qwen3Config(vocab_size=len(tokenizer), hidden_size=HIDDEN, intermediate_size=2 * HIDDEN,
                                          num_hidden_layers=1, max_position_embeddings=4096, **ATTENTION))
    transformer = AceStepTransformer1DModel(hidden_size=HIDDEN, intermediate_size=2 * HIDDEN, num_hidden_layers=2,
                                            in_channels=3 * LATENT, audio_acoustic_hidden_dim=LATENT, patch_size=2,
                                            sliding_window=16, is_turbo=True, **ATTENTION)
    condition_encoder = AceStepConditionEncoder(hidden_size=HIDDEN, intermediate_size=2 * HIDDEN,
                                                text_hidden_dim=HIDDEN, timbre_hidden_dim=LATENT,
                                                num_lyric_encoder_hidden_layers=1, num_timbre_encoder_hidden_layers=1,
                                                sliding_window=16, **ATTENTION)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=WEIGHT_NORM_WARNING, category=FutureWarning)
        vae = AutoencoderOobleck(encoder_hidden_size=4, downsampling_ratios=DOWNSAMPLING, channel_multiples=[1] * 5,
                                 decoder_channels=4, decoder_input_channels=LATENT, audio_channels=2,
                                 sampling_rate=SAMPLE_RATE)
    scheduler = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1, shift=1.0)
    return AceStepPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, transformer=transformer,
                           condition_encoder=condition_encoder, scheduler=scheduler)


def save_tiny_pipeline(folder: str | Path, seed: int = 0) -> Path:
    """Write the tiny pipeline as a diffusers folder (about 1 MB) and return it."""
    target = Path(folder)
    build_tiny_pipeline(seed).save_pretrained(target)
    return target
