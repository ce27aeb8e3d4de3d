"""The Sambert-HifiGan engine: voices loaded from a model directory, text -> 16 kHz mono float32 audio.

The job's declared ``input_format`` decides how its text is read: ``symbols`` are KAN-TTS symbol strings (one
sentence per non-empty line); ``text`` and ``ssml`` go through the Chinese frontend
(``tts_server.inference.frontend``), which parses the text as SSML only when told it is SSML.
"""

from __future__ import annotations

import json
import logging
import math
import re
import time
from collections.abc import Collection, Iterator, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt
import torch

from tts_server.inference.audio import apply_gain
from tts_server.inference.engine import (
    INPUT_FORMATS,
    PITCH_MAX,
    PITCH_MIN,
    VOLUME_DB_MAX,
    VOLUME_DB_MIN,
    EngineError,
    EngineLoadError,
    InputFormat,
    Synthesis,
    VoiceInfo,
)
from tts_server.inference.frontend import Frontend, Utterance
from tts_server.inference.sambert.acoustic import (
    AcousticInputs,
    AcousticOutput,
    AcousticStream,
    SambertConfig,
    SambertModel,
)
from tts_server.inference.sambert.linguistic import EncodedSymbols, LinguisticUnit, Token
from tts_server.inference.sambert.loader import (
    VoiceFiles,
    audio_config_rate,
    config_section,
    extra_voice_files,
    load_state_dict,
    load_strict,
    read_voice_names,
    read_yaml,
    resolve_model_dir,
    voice_files,
)
from tts_server.inference.sambert.nsf import (
    F0Norm,
    NsfDraws,
    NsfHifiGanGenerator,
    binarize_voicing,
)
from tts_server.inference.sambert.vocoder import (
    FAST_CONV_MAX_THREADS,
    HifiGanConfig,
    HifiGanGenerator,
    VocoderStream,
    build_generator,
)
from tts_server.inference.timestamps import SentenceTiming, SymbolToken, Unit, pause_samples, symbol_units

if TYPE_CHECKING:
    from tts_server.config import ExtraVoice, Settings

logger = logging.getLogger(__name__)

DEFAULT_SAMPLE_RATE = 16000
_WARM_UP_PHONES = ("n_c", "i_c", "h_c", "ao_c")


@dataclass(frozen=True)
class _Sentence:
    tokens: list[Token]
    speed: float
    pause_after_s: float
    pitch: float = 0.0
    volume_db: float = 0.0
    #: What the tokens read, in order (``timestamps.Unit``), and ``<mark>`` names after the pause.
    units: tuple[Unit, ...] = ()
    marks_end: tuple[str, ...] = ()


class SambertVoice:
    """One voice: its linguistic unit, acoustic model and vocoder."""

    def __init__(self, files: VoiceFiles, sample_rate: int) -> None:
        self.name = files.name
        self.files = files
        am_config = read_yaml(files.am_config)
        unit_config = config_section(am_config, files.am_config, "linguistic_unit")
        self.unit = LinguisticUnit(unit_config, files.dict_dir, files.am_config)
        params = config_section(am_config, files.am_config, "Model", "KanTtsSAMBERT", "params")

        am_state = load_state_dict(files.am_checkpoint, "model")
        sizes = self.unit.vocab_sizes()
        emb = am_state.get("text_encoder.sy_emb.weight")
        if emb is not None and emb.dim() == 2 and emb.shape[0] == sizes["sy"] - 1 and self.unit.has_mask:
            # ModelScope's Voice builds its tables without the trailing @[MASK] row (ignore_mask); the mask id
            # is never produced for inference input, so the tables are used as they are.
            sizes = {k: v - 1 for k, v in sizes.items()}
        self.am_config = SambertConfig.from_params(params, sizes, str(files.am_config))
        if self.am_config.mas:
            # The alignment module only produces training targets; inference never runs it.
            am_state = {k: v for k, v in am_state.items() if not k.startswith("align_attention.")}
        self.se: torch.Tensor | None = None
        if self.am_config.se:
            if "spk_tokenizer.weight" in am_state:
                raise EngineLoadError(
                    f"checkpoint {files.am_checkpoint}: has a speaker table (spk_tokenizer.weight) but "
                    f"{files.am_config} enables SE (speaker embedding input); the two do not belong together"
                )
            self.se = _load_speaker_embedding(files.se, self.am_config.speaker_units)
        self.am = SambertModel(self.am_config)
        load_strict(self.am, am_state, files.am_checkpoint)
        self.am.eval()
        for p in self.am.parameters():
            p.requires_grad_(False)
        self.am.prepare()

        voc_config = read_yaml(files.voc_config)
        voc_params = config_section(voc_config, files.voc_config, "Model", "Generator", "params")
        self.voc_config = HifiGanConfig.from_params(voc_params, str(files.voc_config))
        self.nsf = self.voc_config.nsf_harmonics is not None
        if self.nsf != self.am_config.nsf:
            raise EngineLoadError(
                f"voice {self.name!r}: the acoustic model {'predicts' if self.am_config.nsf else 'does not predict'}"
                f" f0 (NSF: {self.am_config.nsf} in {files.am_config}) but the vocoder "
                f"{'has' if self.nsf else 'has no'} nsf_params ({files.voc_config})"
            )
        # An NSF acoustic model emits f0 and voicing after the mel; the vocoder's in_channels counts the mel only.
        expected = self.am_config.num_mels - (2 if self.nsf else 0)
        if self.voc_config.in_channels != expected:
            raise EngineLoadError(
                f"voice {self.name!r}: vocoder in_channels {self.voc_config.in_channels} != {expected}, the acoustic "
                f"model's mel channels (num_mels {self.am_config.num_mels}{' minus f0 and voicing' if self.nsf else ''}"
                f") ({files.voc_config})"
            )
        voc_state = load_state_dict(files.voc_checkpoint, "model", "generator")
        self.f0_norm: F0Norm | None = None
        if self.nsf:
            self.f0_norm = F0Norm.from_params(params, str(files.am_config), files.mvn)
        generator = NsfHifiGanGenerator if self.nsf else HifiGanGenerator
        self.vocoder = build_generator(self.voc_config, voc_state, files.voc_checkpoint, generator)
        self.sample_rate = sample_rate
        self.hop_length = self.voc_config.hop_length
        self._check_audio_config()

        emotions = self.unit.emotions
        self.info = VoiceInfo(
            name=self.name,
            emotions=emotions,
            default_emotion="neutral" if "neutral" in emotions else emotions[0],
            sample_rate=sample_rate,
            kind=files.kind,
            stochastic=self.nsf,
        )
        self.default_speaker = self.unit.speakers[0]

    def _check_audio_config(self) -> None:
        path = self.files.audio_config
        if path is None or not path.is_file():
            return
        section = read_yaml(path).get("audio_config")
        if not isinstance(section, Mapping):
            return
        hop = section.get("hop_length")
        if isinstance(hop, int) and hop != self.hop_length:
            raise EngineLoadError(
                f"voice {self.name!r}: {path} hop_length {hop} != vocoder upsampling {self.hop_length}"
            )
        rate = section.get("sampling_rate")
        if isinstance(rate, int) and rate != self.sample_rate:
            raise EngineLoadError(f"voice {self.name!r}: {path} sampling_rate {rate} != model {self.sample_rate}")

    def _inputs(self, encoded: EncodedSymbols) -> AcousticInputs:
        """The acoustic model's id streams for one sentence (the trailing end token dropped)."""

        def ids(a: npt.NDArray[np.int64]) -> torch.Tensor:
            return torch.from_numpy(np.ascontiguousarray(a[:-1]))

        speaker = ids(encoded.speaker)
        if self.se is not None:
            # The reference repeats the embedding once per token (the end token's row dropped with it).
            speaker = self.se.expand(speaker.shape[0], -1)
        return AcousticInputs(ids(encoded.sy), ids(encoded.tone), ids(encoded.syllable_flag),
                              ids(encoded.word_segment), ids(encoded.emotion), speaker)

    def acoustic(
        self,
        encoded: EncodedSymbols,
        speed: float = 1.0,
        timings: dict[str, float] | None = None,
        pitch_shift: float = 0.0,
    ) -> AcousticOutput:
        """Run the acoustic model on one sentence's id streams."""
        return self.am.infer(self._inputs(encoded), speed=speed, timings=timings, pitch_shift=pitch_shift)

    def acoustic_stream(self, encoded: EncodedSymbols, speed: float = 1.0, pitch_shift: float = 0.0) -> AcousticStream:
        """Like ``acoustic``, the mel decoded chunk by chunk as it is iterated (``AcousticStream.chunks``)."""
        return self.am.infer_stream(self._inputs(encoded), speed=speed, pitch_shift=pitch_shift)

    def vocoder_input(self, mel: torch.Tensor) -> torch.Tensor:
        """The acoustic model's output as the vocoder takes it: for NSF voices f0 back in Hz and voicing 0/1."""
        if self.f0_norm is None:
            return mel
        return binarize_voicing(self.f0_norm.denorm(mel))

    def vocode(
        self, mel: torch.Tensor, generator: torch.Generator | None = None, draws: NsfDraws | None = None
    ) -> npt.NDArray[np.float32]:
        """Acoustic model output -> waveform. NSF voices draw their excitation's phase and noise from
        ``generator`` (fresh randomness when None) unless ``draws`` gives them."""
        if mel.shape[0] == 0:
            return np.zeros(0, dtype=np.float32)
        if isinstance(self.vocoder, NsfHifiGanGenerator):
            out = self.vocoder(self.vocoder_input(mel), draws=draws, generator=generator)
        else:
            out = self.vocoder(mel)
        wav: npt.NDArray[np.float32] = out.numpy().astype(np.float32, copy=False)
        return wav


def _load_speaker_embedding(path: Path | None, units: int) -> torch.Tensor:
    """``se.npy``: the voice's speaker embedding, float (1, units) (or (units,)) -> [1, units] float32."""
    expected = f"a float32 array of shape (1, {units})"
    if path is None:
        raise EngineLoadError(f"the acoustic model takes a speaker embedding (SE) but no se.npy was given "
                              f"(expected {expected})")
    if not path.is_file():
        raise EngineLoadError(f"the acoustic model takes a speaker embedding but {path} does not exist ({expected})")
    try:
        se = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise EngineLoadError(f"cannot read the speaker embedding {path}: {exc} (expected {expected})") from exc
    if se.dtype.kind != "f" or se.shape not in ((1, units), (units,)) or not np.all(np.isfinite(se)):
        raise EngineLoadError(f"speaker embedding {path}: expected {expected}, got {se.dtype} {se.shape}")
    return torch.from_numpy(np.ascontiguousarray(se.reshape(1, units), dtype=np.float32))


class SambertEngine:
    """Implements the ``Engine`` protocol for a set of Sambert-HifiGan voices."""

    def __init__(self, voices: list[SambertVoice], threads: int, *, stream_chunk_frames: int = 32,
                 stream_first_chunk_frames: int = 8) -> None:
        if not voices:
            raise EngineLoadError("no voices loaded")
        self._voices = {v.name: v for v in voices}
        self._threads = threads
        self.stream_chunk_frames = stream_chunk_frames
        self.stream_first_chunk_frames = stream_first_chunk_frames
        self._frontends: dict[str, Frontend] = {}
        self._lexicon: Mapping[str, str] = {}
        torch.set_num_threads(threads)

    # -- Engine protocol ---------------------------------------------------------------------------------------

    def voices(self) -> Mapping[str, VoiceInfo]:
        return {name: v.info for name, v in self._voices.items()}

    def warm_up(self) -> None:
        """Synthesise one short syllable sequence per voice (first-call allocations, oneDNN kernel selection)."""
        for voice in self._voices.values():
            unit = voice.unit
            speaker = voice.default_speaker
            emotion = "emotion_" + voice.info.default_emotion
            phones = [p for p in _WARM_UP_PHONES if p in unit.phone_inventory]
            if not phones:
                phones = [p for p in unit.phones if not p.startswith("#")][:4]
            tone = next((t for t in unit.tones if t != "tone_none"), unit.tones[0])
            tokens = [f"{{{p}${tone}$s_none$word_none${emotion}${speaker}}}" for p in phones]
            if "tone_none" in unit.tones:
                tokens.append(f"{{#4$tone_none$s_none$word_none$emotion_none${speaker}}}")
            self.synthesize(" ".join(tokens), voice.name, voice.info.default_emotion, 1.0, input_format="symbols")
            # jieba's dictionary and pypinyin's tables load here, not on the first request.
            self._frontend(voice)

    def synthesize(
        self, text: str, voice: str, emotion: str, speed: float, *, input_format: InputFormat = "text",
        pitch: float = 0.0, volume_db: float = 0.0, seed: int | None = None,
    ) -> Synthesis:
        parts: list[npt.NDArray[np.float32]] = []
        timings: list[SentenceTiming] = []
        stages = {"frontend": 0.0, "acoustic": 0.0, "vocoder": 0.0}
        rate = self._voice(voice).sample_rate
        for piece in self._pieces(
            text, voice, emotion, speed, input_format=input_format, pitch=pitch, volume_db=volume_db, seed=seed,
            chunk_frames=0,
        ):
            parts.append(piece.audio)
            timings.extend(piece.timings)
            for key, value in piece.stage_seconds.items():
                stages[key] = stages.get(key, 0.0) + value
        audio = np.concatenate(parts) if parts else np.zeros(0, dtype=np.float32)
        return Synthesis(audio=audio.astype(np.float32, copy=False), sample_rate=rate, stage_seconds=stages,
                         timings=tuple(timings))

    def synthesize_stream(
        self, text: str, voice: str, emotion: str, speed: float, *, input_format: InputFormat = "text",
        pitch: float = 0.0, volume_db: float = 0.0, seed: int | None = None,
    ) -> Iterator[Synthesis]:
        """Audio in chunks of about ``stream_chunk_frames`` mel frames as the decoder makes them (each sentence's
        first chunk ``stream_first_chunk_frames``), or whole sentences where ``stream_chunk_frames`` is 0. The
        concatenation equals ``synthesize``'s audio up to float rounding. ``seed`` makes a
        stochastic (NSF) voice's random excitation reproducible; without one it is drawn fresh. Deterministic voices
        ignore it."""
        return self._pieces(
            text, voice, emotion, speed, input_format=input_format, pitch=pitch, volume_db=volume_db,
            seed=seed, chunk_frames=self.stream_chunk_frames,
        )

    def _pieces(
        self, text: str, voice: str, emotion: str, speed: float, *, input_format: InputFormat,
        pitch: float, volume_db: float, seed: int | None, chunk_frames: int,
    ) -> Iterator[Synthesis]:
        if input_format not in INPUT_FORMATS:
            raise EngineError(
                f"input_format must be one of {', '.join(INPUT_FORMATS)}, got {input_format!r}", param="input_format"
            )
        v = self._voice(voice)
        emotion = self._emotion(v, emotion)
        if not isinstance(speed, int | float) or not math.isfinite(speed) or speed <= 0:
            raise EngineError(f"speed must be a positive number, got {speed!r}", param="speed")
        _check_range(pitch, PITCH_MIN, PITCH_MAX, "pitch")
        _check_range(volume_db, VOLUME_DB_MIN, VOLUME_DB_MAX, "volume")
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**63):
            raise EngineError(f"seed must be an integer from 0 to 2**63 - 1, got {seed!r}", param="seed")
        generator: torch.Generator | None = None
        if v.info.stochastic:
            # One generator per request: its sentences draw in order, so a seed fixes the whole audio.
            generator = torch.Generator()
            if seed is None:
                generator.seed()
            else:
                generator.manual_seed(seed)
        return self._run_sentences(v, text, emotion, speed, input_format, pitch, volume_db, generator, chunk_frames)

    def _run_sentences(
        self, v: SambertVoice, text: str, emotion: str, speed: float, input_format: InputFormat,
        pitch: float, volume_db: float, generator: torch.Generator | None, chunk_frames: int,
    ) -> Iterator[Synthesis]:
        # A generator of its own, so that the checks above raise when the stream is asked for, not when it is read.
        torch.set_num_threads(self._threads)
        clock = _FrontendClock()
        with clock:
            sentences = self._sentences(v, text, emotion, input_format)
            if isinstance(sentences, list):
                # Encode everything first so that a bad symbol in a later sentence fails before any audio is sent.
                pairs: Iterator[tuple[_Sentence, EncodedSymbols]] = iter(
                    [(s, v.unit.encode_tokens(s.tokens)) for s in sentences])
            else:
                # Text: the frontend has checked the whole input; each later sentence's symbols are made when it is
                # reached, so the first audio does not wait for them (its time goes to that sentence's "frontend").
                pairs = ((s, v.unit.encode_tokens(s.tokens)) for s in sentences)
        for sentence, ids in clock.timed(pairs):
            frontend_s = clock.take()
            # SSML <prosody> values add to the request's; the sum is kept in range (as rates are).
            shift = min(PITCH_MAX, max(PITCH_MIN, pitch + sentence.pitch))
            gain_db = min(VOLUME_DB_MAX, max(VOLUME_DB_MIN, volume_db + sentence.volume_db))
            sentence_speed = speed * sentence.speed
            # A gain is peak-limited over the whole sentence, so it needs all of the sentence's audio first.
            # NSF voices' excitation is drawn over the whole sentence: they vocode per sentence.
            chunked = chunk_frames > 0 and gain_db == 0.0 and v.f0_norm is None
            vocoder = v.vocoder.stream() if chunked else None
            # Silence in whole hops: every boundary of the timestamps stays a multiple of the hop.
            pause = pause_samples(sentence.pause_after_s, v.sample_rate, v.hop_length)
            if vocoder is not None:
                first = True
                for piece, frames in self._chunks(v, ids, sentence_speed, shift, vocoder, chunk_frames):
                    extra: dict[str, float] = {}
                    if frontend_s:
                        extra, frontend_s = {"frontend": frontend_s}, 0.0
                    timings = (_timing(v, sentence, frames, pause),) if first else ()
                    first = False
                    yield Synthesis(piece.audio, piece.sample_rate, {**piece.stage_seconds, **extra}, timings)
                if pause or first:
                    # A sentence whose every duration rounded to zero has no chunk: its timing comes here.
                    timings = (_timing(v, sentence, torch.zeros(len(sentence.tokens), dtype=torch.long), pause),)
                    yield Synthesis(np.zeros(pause, dtype=np.float32), v.sample_rate, {}, timings if first else ())
                continue
            with torch.inference_mode():
                t1 = time.perf_counter()
                am = v.acoustic(ids, speed=sentence_speed, pitch_shift=shift)
                t2 = time.perf_counter()
                wav = v.vocode(am.postnet_outputs, generator=generator)
                t3 = time.perf_counter()
            # Each sentence is peak-limited on its own, so a streamed piece never waits for later audio.
            wav = apply_gain(wav, gain_db)
            if pause:
                wav = np.concatenate([wav, np.zeros(pause, dtype=np.float32)])
            yield Synthesis(
                audio=wav,
                sample_rate=v.sample_rate,
                stage_seconds={"frontend": frontend_s, "acoustic": t2 - t1, "vocoder": t3 - t2},
                timings=(_timing(v, sentence, am.frames, pause),),
            )
            frontend_s = 0.0

    def _chunks(
        self, v: SambertVoice, ids: EncodedSymbols, speed: float, pitch_shift: float, vocoder: VocoderStream,
        chunk_frames: int,
    ) -> Iterator[tuple[Synthesis, torch.Tensor]]:
        """One sentence, chunk by chunk: decoder and postnet as far as the chunk needs, then the causal vocoder
        carrying its state from the previous chunk. Each chunk comes with the sentence's frames per token (known
        before the first chunk is decoded)."""
        # Inference mode is entered per chunk, never held across a yield: the caller runs between chunks.
        t0 = time.perf_counter()
        with torch.inference_mode():
            stream = v.acoustic_stream(ids, speed=speed, pitch_shift=pitch_shift)
            mels = stream.chunks(self.stream_first_chunk_frames, chunk_frames)
        while True:
            with torch.inference_mode():
                mel = next(mels, None)
                t1 = time.perf_counter()
                if mel is None:
                    return
                wav = vocoder.push(mel).numpy().astype(np.float32, copy=False)
            t2 = time.perf_counter()
            yield Synthesis(wav, v.sample_rate, {"acoustic": t1 - t0, "vocoder": t2 - t1}), stream.durations
            t0 = time.perf_counter()

    # -- SupportsLexicon ---------------------------------------------------------------------------------------

    def set_lexicon(self, entries: Mapping[str, str]) -> None:
        self._lexicon = dict(entries)
        for frontend in self._frontends.values():
            frontend.set_lexicon(self._lexicon)

    def preview(self, text: str, voice: str, *, input_format: InputFormat = "text") -> dict[str, Any]:
        if input_format not in ("text", "ssml"):
            raise EngineError("a preview reads text or ssml; symbols are read as given", param="input_format")
        if not text.strip():
            raise EngineError("text is empty", param="text")
        return self._frontend(self._voice(voice)).preview(text, ssml=input_format == "ssml")

    # -- helpers -----------------------------------------------------------------------------------------------

    def _voice(self, name: str) -> SambertVoice:
        voice = self._voices.get(name)
        if voice is None:
            raise EngineError(f"unknown voice {name!r}; available: {', '.join(self._voices)}", param="voice")
        return voice

    @staticmethod
    def _emotion(voice: SambertVoice, emotion: str) -> str:
        name = emotion[len("emotion_") :] if emotion.startswith("emotion_") else emotion
        if name not in voice.info.emotions:
            raise EngineError(
                f"unknown emotion {emotion!r} for voice {voice.name!r}; allowed: {', '.join(voice.info.emotions)}",
                param="emotion",
            )
        return name

    def _sentences(
        self, voice: SambertVoice, text: str, emotion: str, input_format: InputFormat
    ) -> list[_Sentence] | Iterator[_Sentence]:
        """The sentences to synthesise: a list for symbol input; for text and SSML an iterator that makes each
        sentence's symbols when it is reached (the frontend rejects bad input before this returns)."""
        stripped = text.strip()
        if not stripped:
            raise EngineError("text is empty", param="text")
        if input_format == "symbols":
            sentences = []
            offset = 0
            for line in text.splitlines(keepends=True):
                start, offset = offset, offset + len(line)
                if not line.strip():
                    continue
                tokens = voice.unit.parse(line)
                spans = [(start + m.start(), start + m.end()) for m in re.finditer(r"\S+", line)]
                units = symbol_units([_symbol(t, span) for t, span in zip(tokens, spans, strict=True)])
                tokens = voice.unit.with_emotion_and_speaker(tokens, emotion, None)
                sentences.append(_Sentence(tokens, 1.0, 0.0, units=units))
            return sentences
        frontend = self._frontend(voice)
        utterances = frontend.utterances(
            text,
            speaker=voice.default_speaker,
            emotion=emotion,
            allowed_emotions=voice.info.emotions,
            ssml=input_format == "ssml",
        )
        return self._from_utterances(voice, utterances)

    @staticmethod
    def _from_utterances(voice: SambertVoice, utterances: Iterator[Utterance]) -> Iterator[_Sentence]:
        count = 0
        for utt in utterances:
            if not math.isfinite(utt.speed) or utt.speed <= 0:
                raise EngineError(f"invalid speaking rate {utt.speed!r}", param="text")
            if not math.isfinite(utt.pitch) or not math.isfinite(utt.volume_db):
                raise EngineError("invalid prosody pitch or volume", param="text")
            tokens = voice.unit.parse(utt.symbols)
            units = utt.units
            if sum(u.tokens for u in units) != len(tokens):
                # Timings still cover the audio (syllables from the symbols, without text offsets).
                units = symbol_units([_symbol(t, (0, 0)) for t in tokens])
                units = tuple(replace(u, source=None) for u in units)
            count += 1
            yield _Sentence(
                tokens,
                float(utt.speed),
                float(utt.pause_after_s),
                float(utt.pitch),
                float(utt.volume_db),
                units,
                tuple(utt.marks_end),
            )
        if not count:
            raise EngineError("the text contains nothing to synthesize", param="text")

    def _frontend(self, voice: SambertVoice) -> Frontend:
        frontend = self._frontends.get(voice.name)
        if frontend is None:
            frontend = Frontend(phone_inventory=voice.unit.phone_inventory)
            if self._lexicon:  # a fresh frontend has none
                frontend.set_lexicon(self._lexicon)
            self._frontends[voice.name] = frontend
        return frontend


class _FrontendClock:
    """Time spent making sentences (frontend and symbol encoding), taken by the sentence that comes next."""

    def __init__(self) -> None:
        self._spent = 0.0
        self._since = 0.0

    def __enter__(self) -> None:
        self._since = time.perf_counter()

    def __exit__(self, *exc: object) -> None:
        self._spent += time.perf_counter() - self._since

    def timed(self, pairs: Iterator[tuple[_Sentence, EncodedSymbols]]) -> Iterator[tuple[_Sentence, EncodedSymbols]]:
        while True:
            with self:
                pair = next(pairs, None)
            if pair is None:
                return
            yield pair

    def take(self) -> float:
        spent, self._spent = self._spent, 0.0
        return spent


def _symbol(token: Token, span: tuple[int, int]) -> SymbolToken:
    f = token.fields
    return f[0], f[1], f[2], f[3], span


def _timing(v: SambertVoice, sentence: _Sentence, frames: torch.Tensor, pause: int) -> SentenceTiming:
    return SentenceTiming(sentence.units, tuple(int(f) for f in frames.tolist()), v.hop_length, pause,
                          sentence.marks_end)


def _check_range(value: float, low: float, high: float, param: str) -> None:
    if not isinstance(value, int | float) or not math.isfinite(value) or not low <= value <= high:
        raise EngineError(f"{param} must be a number from {low:g} to {high:g}, got {value!r}", param=param)


def _model_sample_rate(model_dir: Path) -> int:
    path = model_dir / "configuration.json"
    if not path.is_file():
        return DEFAULT_SAMPLE_RATE
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise EngineLoadError(f"cannot read {path}: {exc}") from exc
    model = data.get("model") if isinstance(data, dict) else None
    rate = model.get("sample_rate", DEFAULT_SAMPLE_RATE) if isinstance(model, dict) else DEFAULT_SAMPLE_RATE
    if not isinstance(rate, int) or rate <= 0:
        raise EngineLoadError(f"{path}: model.sample_rate must be a positive integer, got {rate!r}")
    return rate


def load_voices(model_dir: Path, only: Collection[str] = ()) -> list[SambertVoice]:
    names = read_voice_names(model_dir)
    unknown = [v for v in only if v not in names]
    if unknown:
        raise EngineLoadError(
            f"model.voices names {unknown} not in {model_dir / 'voices' / 'voices.json'} (available: {names})"
        )
    selected = [n for n in names if not only or n in only]
    rate = _model_sample_rate(model_dir)
    voices = []
    for name in selected:
        t0 = time.perf_counter()
        voices.append(SambertVoice(voice_files(model_dir, name), rate))
        logger.info("loaded voice %s in %.2f s", name, time.perf_counter() - t0)
    return voices


def load_extra_voices(entries: Collection[ExtraVoice], model_dir: Path, taken: Collection[str]) -> list[SambertVoice]:
    """The ``[[voices.extra]]`` voices. A bad entry fails with one line that names it and says why."""
    voices = []
    names = set(taken)
    for entry in entries:
        t0 = time.perf_counter()
        try:
            if entry.name in names:
                raise EngineLoadError("the name is already used by a voice of the model directory")
            files = extra_voice_files(entry, model_dir / "voices" / read_voice_names(model_dir)[0] / "dict")
            rate = entry.sample_rate
            if rate is None and files.audio_config is not None:
                rate = audio_config_rate(files.audio_config)
            voices.append(SambertVoice(files, rate or _model_sample_rate(model_dir)))
        except EngineLoadError as exc:
            reason = " ".join(str(exc).split())
            raise EngineLoadError(f"voices.extra entry {entry.name!r}: {reason}") from exc
        names.add(entry.name)
        logger.info("loaded personal voice %s in %.2f s", entry.name, time.perf_counter() - t0)
    return voices


def load_sambert_engine(settings: Settings) -> SambertEngine:
    """Build the engine from ``settings.model``: local ``model_dir`` or ``model_id`` downloaded into the cache."""
    cfg = settings.model
    torch.set_num_threads(cfg.torch_threads)
    model_dir = resolve_model_dir(cfg.model_dir, cfg.model_id, cfg.download_dir)
    voices = load_voices(model_dir, cfg.voices)
    voices += load_extra_voices(settings.voices.extra, model_dir, [v.name for v in voices])
    if not cfg.vocoder_fast_conv or cfg.torch_threads > FAST_CONV_MAX_THREADS:
        # Unused with more threads (the convolutions run direct there): do not keep their transformed kernels.
        for voice in voices:
            voice.vocoder.use_fast_conv(False)
    for voice in voices:
        voice.vocoder.set_chunk_frames(cfg.vocoder_chunk_frames)
    if cfg.vocoder_precision == "bf16":
        for voice in voices:
            if not voice.vocoder.use_bfloat16():
                logger.warning("voice %s: vocoder_precision=bf16 needs a causal vocoder and native CPU bf16 "
                               "support; running the vocoder in fp32", voice.name)
    return SambertEngine(voices, cfg.torch_threads, stream_chunk_frames=settings.engine.stream_chunk_frames,
                         stream_first_chunk_frames=settings.engine.stream_first_chunk_frames)
