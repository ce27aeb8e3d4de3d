"""Settings: one frozen model, loaded once from a TOML file and ``TTS_`` environment variables.

Precedence (highest first): explicit overrides (CLI flags, tests), environment (``TTS_POOL__WORKERS=4``), the TOML
file, defaults. Sections merge key by key across sources.
Unknown keys anywhere are an error that names the key, so a typo never silently falls back to a default.
"""

from __future__ import annotations

import tomllib
import types
import typing
from collections.abc import Mapping
from contextvars import ContextVar
from pathlib import Path
from types import MappingProxyType
from typing import Any, Literal
from urllib.parse import urlsplit

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic.fields import FieldInfo
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

DEFAULT_MODEL_ID = "iic/speech_sambert-hifigan_tts_zh-cn_16k"


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ServerSettings(_Section):
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=1, le=65535)
    #: Seconds to finish in-flight and queued work after SIGTERM before workers are stopped.
    drain_timeout_s: float = Field(30.0, gt=0)
    #: Seconds between SIGTERM and closing the listener: readiness reports 503 while requests are still served,
    #: so load balancers stop routing here before connections start being refused.
    drain_delay_s: float = Field(2.0, ge=0)
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    #: Request bodies above this are rejected with 413 before they are parsed.
    max_body_bytes: int = Field(64 * 1024, ge=1024)
    #: Seconds a client gets to send a complete request head, counted from the connection opening (or the end of
    #: the previous response), not reset by each byte: a client trickling partial headers is answered 408 and
    #: closed instead of holding a descriptor forever. A real client sends its head in one packet.
    header_timeout_s: float = Field(10.0, gt=0)
    #: Seconds a client gets to send the whole request body after its head (408 when the app is still reading it,
    #: a closed connection otherwise). 30 s lets a max_body_bytes body through at about 2 KiB/s.
    body_timeout_s: float = Field(30.0, gt=0)
    #: Open client connections; one more is answered 503 and closed at once, so a flood of idle or slow
    #: connections cannot exhaust the process's file descriptors. Far above what the worker pool can serve.
    max_connections: int = Field(512, ge=1)
    #: One log line per request (method, path, status, duration, request id) on the ``tts_server.access`` logger,
    #: rejected ones (401/413/429/503...) included. On by default: it is what an operator needs to see an attack
    #: or a misbehaving client, and costs one line per request next to a synthesis of tens of milliseconds.
    access_log: bool = True


class PoolSettings(_Section):
    workers: int = Field(2, ge=1, le=64)
    #: Jobs waiting for a worker; one more is rejected at once with 503.
    queue_size: int = Field(16, ge=0)
    #: Deadline of a job from admission to result, queueing included.
    job_timeout_s: float = Field(60.0, gt=0)
    #: Recycle a worker after this many jobs (0 = never).
    max_jobs_per_worker: int = Field(0, ge=0)
    #: Recycle a worker whose resident memory exceeds this (0 = never).
    max_worker_rss_mb: int = Field(0, ge=0)
    #: Time a worker may take to load and warm up its engine.
    startup_timeout_s: float = Field(300.0, gt=0)
    #: Restart back-off: first delay, doubled per consecutive failure up to the max. A slot never gives up: a
    #: transient fault (a full disk, a model directory being replaced) must heal without a pod restart.
    restart_backoff_s: float = Field(0.5, ge=0)
    restart_backoff_max_s: float = Field(30.0, ge=0)
    #: Consecutive failures (failed starts, crashes) after which a slot's failures are logged as a crash loop.
    #: The counter is reset by a worker reporting ready.
    crash_loop_threshold: int = Field(5, ge=1)
    #: The parent pings each worker this often; a worker answers from a thread, idle or busy, so a missed answer
    #: means a hung (stopped, wedged) process, not a long job.
    heartbeat_interval_s: float = Field(1.0, gt=0)
    #: A worker that has not answered a ping for this long is killed and replaced (its job, if any, is retried);
    #: a worker with an unanswered ping never gets a new job and does not count as ready.
    heartbeat_timeout_s: float = Field(3.0, gt=0)
    #: ``/livez`` fails once no worker has been ready for this long (since start-up, or since the last one was
    #: lost), so that an orchestrator restarts a pod that cannot heal itself. Must comfortably exceed the model
    #: load time.
    liveness_timeout_s: float = Field(600.0, gt=0)
    #: Seconds a stopping worker gets between SIGTERM and SIGKILL.
    kill_grace_s: float = Field(2.0, ge=0)
    #: Return freed memory to the system after warm-up and whenever a worker goes idle (glibc only): keeps a
    #: worker's resident memory near its working set instead of its high-water mark. Costs a few ms per idle moment.
    release_memory: bool = True
    #: oneDNN primitive cache entries per worker. oneDNN compiles a primitive per convolution and input shape. The
    #: vocoder runs in fixed-size pieces (``model.vocoder_chunk_frames``), so ~150 primitives (four piece lengths
    #: of ~37 each) serve every sentence, plus the acoustic model's ~9 per new sentence length (its LSTM and FSMN
    #: convolutions). Over 40 sentences of random length: 128 entries spent 0.4 s compiling (1.3% of the CPU) at
    #: 491 MiB, 256 entries 0.16 s at 516 MiB, 64 entries 0.75 s at 481 MiB. With the vocoder run in one pass per
    #: sentence (``vocoder_chunk_frames = 0``) every new sentence length compiles ~40 more: a large cache then
    #: grows a worker by ~25 MiB per distinct length and a small one recompiles (docs/capacity.md,
    #: ``bench/vocoder_chunks.py``).
    onednn_primitive_cache: int = Field(128, ge=0)


class ModelSettings(_Section):
    model_id: str = DEFAULT_MODEL_ID
    #: A local model directory in the published layout; when set, nothing is downloaded.
    model_dir: Path | None = None
    #: Where models named by ``model_id`` are downloaded (not the audio cache, see ``cache.disk_dir``).
    download_dir: Path = Path.home() / ".cache" / "tts-server"
    #: Voices to load (empty = all voices in voices/voices.json).
    voices: tuple[str, ...] = ()
    #: torch intra-op threads per worker process.
    torch_threads: int = Field(1, ge=1, le=64)
    #: ``fp32`` reproduces the reference implementation to 1e-6. ``bf16`` runs the vocoder (about 3/4 of the
    #: compute) in bfloat16 on CPUs with native bf16 (AVX512-BF16/AMX): about twice as fast, at roughly -35 dB
    #: deviation from fp32. Falls back to fp32, with a warning, where the CPU has no native bf16.
    vocoder_precision: Literal["fp32", "bf16"] = "fp32"
    #: fp32 vocoder: run the residual blocks' long-kernel convolutions (kernels 7 and 11, 64+ channels) by DFT
    #: overlap-save instead of direct convolution where that measured faster (``bench/vocoder_layers.py``): about
    #: 1.15-1.3x faster vocoder at torch_threads = 1 (no gain at 2, where it stays direct), output within 1e-5 of
    #: direct (parity with the reference unchanged, ~1e-6). Costs ~44 MiB per full-size voice (the kernels
    #: transformed for the DFT products), not kept when torch_threads > 1.
    vocoder_fast_conv: bool = True
    #: Vocode each sentence in pieces of this many mel frames carrying the causal state (same audio within float
    #: rounding), its last piece padded to a multiple of a quarter of it: every convolution then sees one of four
    #: input lengths, so oneDNN's compiled primitives are reused across sentences and the working set stays a
    #: piece's whatever the sentence's length. 0: one pass per sentence (new primitives for every new length,
    #: activations growing with the longest sentence). Non-causal and NSF vocoders always run in one pass.
    vocoder_chunk_frames: int = Field(128, ge=0, le=100_000)

    @field_validator("model_dir", "download_dir")
    @classmethod
    def _expand_home(cls, value: Path | None) -> Path | None:
        return value.expanduser() if value is not None else None


class ExtraVoice(_Section):
    """A fine-tuned (personal) voice outside the model directory: the files a ModelScope personal-TTS fine-tune
    writes. In a config file, relative paths are relative to the file."""

    #: The voice's name in requests and ``/v1/voices``; must not clash with a voice of the model directory.
    name: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    #: KAN-TTS acoustic model config (``am/config.yaml``) and checkpoint: a ``.pth`` file, or a directory of
    #: ``checkpoint_<n>.pth`` files (the highest ``n`` is used).
    am_config: Path
    am_checkpoint: Path
    #: KAN-TTS HiFi-GAN config and checkpoint (file or directory, as for the acoustic model).
    voc_config: Path
    voc_checkpoint: Path
    #: The speaker embedding (``se.npy``, float32 (1, speaker_units)): needed when the acoustic model has SE.
    se: Path | None = None
    #: f0 mean/std (``mvn.npy``): needed when the acoustic model's ``nsf_norm_type`` is ``mean_std``.
    mvn: Path | None = None
    #: The linguistic dictionary (the folder holding ``PinYin/``); default: that of the model directory's first
    #: voice, which a fine-tune of it shares.
    dict_dir: Path | None = None
    #: KAN-TTS ``audio_config.yaml``, optional: its sampling rate is the voice's, and its hop length is checked.
    audio_config: Path | None = None
    #: The voice's sample rate; default: ``audio_config``'s, else the model directory's.
    sample_rate: int | None = Field(None, ge=8000, le=48000)

    @field_validator("am_config", "am_checkpoint", "voc_config", "voc_checkpoint", "se", "mvn", "dict_dir",
                     "audio_config")
    @classmethod
    def _expand_home(cls, value: Path | None) -> Path | None:
        return value.expanduser() if value is not None else None


class VoicesSettings(_Section):
    """Voices beside the model directory's: ``[[voices.extra]]`` tables, loaded after its voices, in order."""

    extra: tuple[ExtraVoice, ...] = ()

    @field_validator("extra")
    @classmethod
    def _unique_names(cls, value: tuple[ExtraVoice, ...]) -> tuple[ExtraVoice, ...]:
        seen: set[str] = set()
        for voice in value:
            if voice.name in seen:
                raise ValueError(f"two entries are named {voice.name!r}")
            seen.add(voice.name)
        return value


class LimitSettings(_Section):
    max_text_chars: int = Field(500, ge=1)


class EngineSettings(_Section):
    #: ``sambert`` or ``package.module:factory``.
    name: str = "sambert"
    #: Streaming requests get audio in chunks of about this many mel frames (12.5 ms each at 16 kHz, hop 200) as
    #: the decoder makes them; 0 streams whole sentences instead.
    stream_chunk_frames: int = Field(32, ge=0, le=10000)
    #: The first chunk of each sentence is smaller, so that its audio starts sooner; each next chunk is twice the
    #: one before, up to ``stream_chunk_frames``, so that it is ready before the audio sent so far has played.
    stream_first_chunk_frames: int = Field(4, ge=1, le=10000)


class AuthSettings(_Section):
    """API keys for ``/v1/*``. Off by default for local use; probes, metrics, docs and the WebUI stay open."""

    enabled: bool = False
    #: Accepted ``Authorization: Bearer`` keys (``TTS_AUTH__KEYS='["k1","k2"]'``).
    keys: tuple[SecretStr, ...] = ()
    #: A file with one key per line (blank lines and ``#`` comments ignored), read at startup.
    keys_file: Path | None = None

    @field_validator("keys")
    @classmethod
    def _keys_sane(cls, value: tuple[SecretStr, ...]) -> tuple[SecretStr, ...]:
        for key in value:
            secret = key.get_secret_value()
            if not secret or secret != secret.strip() or any(c.isspace() for c in secret):
                raise ValueError("API keys must be non-empty and contain no whitespace")
        return value

    @field_validator("keys_file")
    @classmethod
    def _expand_home(cls, value: Path | None) -> Path | None:
        return value.expanduser() if value is not None else None

    @model_validator(mode="after")
    def _has_keys(self) -> AuthSettings:
        if self.enabled and not self.keys and self.keys_file is None:
            raise ValueError("auth.enabled needs auth.keys or auth.keys_file")
        return self


class RateLimitSettings(_Section):
    """Token bucket per API key (per client address when auth is off) on ``/v1/*``; over it -> 429."""

    enabled: bool = False
    #: Sustained requests per second each client may make.
    requests_per_second: float = Field(5.0, gt=0)
    #: Requests a client may make at once after being idle (the bucket size).
    burst: int = Field(10, ge=1)
    #: Buckets kept in memory; the least recently seen client is forgotten first (it then starts with a full
    #: bucket, which is what it would have had anyway after ``burst / requests_per_second`` idle seconds).
    max_clients: int = Field(10_000, ge=1)


class CorsSettings(_Section):
    """Cross-origin access for browser clients on other origins. Off by default."""

    enabled: bool = False
    #: Exact origins (``https://app.example.com``); ``*`` only without credentials.
    origins: tuple[str, ...] = ()
    allow_credentials: bool = False

    @field_validator("origins")
    @classmethod
    def _origins_exact(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for origin in value:
            if origin == "*":
                continue
            parts = urlsplit(origin)
            if parts.scheme not in ("http", "https") or not parts.netloc or parts.path or parts.query \
                    or parts.fragment:
                raise ValueError(f"CORS origin {origin!r} must be scheme://host[:port] with nothing after it")
        return value

    @model_validator(mode="after")
    def _no_wildcard_with_credentials(self) -> CorsSettings:
        if self.enabled and not self.origins:
            raise ValueError("cors.enabled needs at least one entry in cors.origins")
        if self.allow_credentials and "*" in self.origins:
            raise ValueError("cors.origins must not contain '*' when cors.allow_credentials is true")
        return self


class CacheSettings(_Section):
    """Audio cache for identical requests (same exact text, voice, emotion, speed, format, rate, model)."""

    enabled: bool = False
    #: In-memory LRU bound, in bytes of encoded audio.
    max_bytes: int = Field(64 * 1024 * 1024, ge=0)
    #: Optional second level on disk, in a subdirectory ``tts-audio-cache`` the cache creates, marks and owns (so
    #: it never deletes other files here); None keeps everything in memory and writes no file.
    disk_dir: Path | None = None
    #: Disk bound, in bytes; the least recently used files are deleted beyond it.
    disk_max_bytes: int = Field(1024 * 1024 * 1024, ge=0)
    #: Bump to invalidate cached audio after changing model files in place.
    revision: str = ""

    @field_validator("disk_dir")
    @classmethod
    def _expand_home(cls, value: Path | None) -> Path | None:
        return value.expanduser() if value is not None else None


class LexiconSettings(_Section):
    """The user lexicon (``/v1/lexicon``): word -> pinyin readings that win over the frontend's own."""

    #: JSON file holding the lexicon, written atomically on every change and re-read by the workers when its
    #: version changes; None turns the lexicon off (its routes then refuse changes). A corrupt file stops start-up
    #: rather than silently dropping the entries an operator relies on.
    path: Path | None = None
    #: Bounds a client cannot exceed: every worker holds the whole lexicon and re-reads it after each change.
    max_entries: int = Field(10_000, ge=1, le=1_000_000)
    max_word_chars: int = Field(16, ge=1, le=64)

    @field_validator("path")
    @classmethod
    def _expand_home(cls, value: Path | None) -> Path | None:
        return value.expanduser() if value is not None else None


class OpenAISettings(_Section):
    """Behaviour of the OpenAI-compatible ``POST /v1/audio/speech``."""

    #: Resample ``pcm`` to 24 kHz like OpenAI's (default: the model's native 16 kHz, see ``X-Sample-Rate``).
    pcm_24khz: bool = False


class WebSocketSettings(_Section):
    """The incremental-text WebSocket ``/v1/tts/ws``."""

    #: Seconds a session may go without any client message while no audio is being made (-> close 4408).
    idle_timeout_s: float = Field(30.0, gt=0)
    #: Text received and not yet synthesised, in characters; beyond it the session ends (-> close 4413).
    max_buffered_chars: int = Field(2000, ge=1)
    #: A comma ends a clause once the clause has this many letters/digits (shorter ones wait for more text).
    min_comma_clause_chars: int = Field(8, ge=1)
    #: A clause without punctuation is cut at this many characters (``limits.max_text_chars`` if that is lower).
    max_clause_chars: int = Field(120, ge=1)
    #: Largest WebSocket message the server accepts, in bytes (bigger ones close the connection with 1009).
    max_message_bytes: int = Field(64 * 1024, ge=1024)


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="TTS_",
        env_nested_delimiter="__",
        extra="forbid",
        frozen=True,
        case_sensitive=False,
    )

    server: ServerSettings = ServerSettings()
    pool: PoolSettings = PoolSettings()
    model: ModelSettings = ModelSettings()
    voices: VoicesSettings = VoicesSettings()
    limits: LimitSettings = LimitSettings()
    engine: EngineSettings = EngineSettings()
    auth: AuthSettings = AuthSettings()
    rate_limit: RateLimitSettings = RateLimitSettings()
    cors: CorsSettings = CorsSettings()
    cache: CacheSettings = CacheSettings()
    openai: OpenAISettings = OpenAISettings()
    lexicon: LexiconSettings = LexiconSettings()
    websocket: WebSocketSettings = WebSocketSettings()

    @model_validator(mode="after")
    def _check(self) -> Settings:
        if self.pool.restart_backoff_max_s < self.pool.restart_backoff_s:
            raise ValueError("pool.restart_backoff_max_s must be >= pool.restart_backoff_s")
        return self

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (init_settings, env_settings, _TomlFileSource(settings_cls))


#: Values of the TOML file being loaded by ``load_settings`` (a context variable, so concurrent loads in
#: different tasks cannot see each other's file).
_FILE_VALUES: ContextVar[Mapping[str, Any]] = ContextVar("tts_settings_file_values", default=MappingProxyType({}))


class _TomlFileSource(PydanticBaseSettingsSource):
    """Lowest-priority source: the TOML file handed to ``load_settings``."""

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        return _FILE_VALUES.get().get(field_name), field_name, False

    def __call__(self) -> dict[str, Any]:
        return dict(_FILE_VALUES.get())


class ConfigError(Exception):
    """The configuration is invalid; the message names the offending key."""


def _format_validation_error(exc: ValidationError, source: str) -> str:
    parts = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"]) or "<root>"
        if err["type"] == "extra_forbidden":
            parts.append(f"unknown key '{loc}'")
        else:
            parts.append(f"'{loc}': {err['msg']}")
    return f"invalid configuration ({source}): " + "; ".join(parts)


def _is_path_type(annotation: Any) -> bool:
    """``Path`` or an optional/union containing it."""
    if annotation is Path:
        return True
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union:
        return any(arg is Path for arg in typing.get_args(annotation))
    return False


def _item_model(annotation: Any) -> type[BaseModel] | None:
    """The section model of a ``tuple[Model, ...]`` field (``[[section.list]]`` tables), else None."""
    if typing.get_origin(annotation) not in (tuple, list):
        return None
    args = [a for a in typing.get_args(annotation) if a is not Ellipsis]
    if len(args) == 1 and isinstance(args[0], type) and issubclass(args[0], BaseModel):
        return args[0]
    return None


def _is_relative(value: str) -> bool:
    # "~/x" is absolute once the field's validator expands it; "" is left for validation to judge.
    return bool(value) and not value.startswith("~") and not Path(value).is_absolute()


def _resolve_file_paths(model: type[BaseModel], values: Mapping[str, Any], base: Path) -> dict[str, Any]:
    """Relative paths in a config file, resolved against the file's directory.

    A file's paths mean the same wherever the server is started from (a relative ``model_dir`` next to the
    file keeps working from any working directory). Every ``Path``-typed field of every section is covered,
    found from the model, so a new path setting needs no change here. Environment variables and explicit
    overrides are not touched: they stay relative to the working directory, like any command line path.
    """
    out = dict(values)
    for name, field in model.model_fields.items():
        value = values.get(name)
        annotation = field.annotation
        if isinstance(value, Mapping) and isinstance(annotation, type) and issubclass(annotation, BaseModel):
            out[name] = _resolve_file_paths(annotation, value, base)
        elif isinstance(value, list) and (item := _item_model(annotation)) is not None:
            out[name] = [_resolve_file_paths(item, v, base) if isinstance(v, Mapping) else v for v in value]
        elif isinstance(value, str) and _is_path_type(annotation) and _is_relative(value):
            out[name] = str(base / value)
    return out


def load_settings(config_file: Path | None = None, **overrides: Any) -> Settings:
    """Load settings from an optional TOML file, the environment and explicit overrides (highest)."""
    file_values: dict[str, Any] = {}
    source = "defaults and environment"
    if config_file is not None:
        try:
            with config_file.open("rb") as fh:
                file_values = tomllib.load(fh)
        except OSError as exc:
            raise ConfigError(f"cannot read config file {config_file}: {exc.strerror}") from exc
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"config file {config_file} is not valid TOML: {exc}") from exc
        source = str(config_file)
        # The directory the user wrote the file in, not its symlink target: a Kubernetes ConfigMap mount is a
        # symlink into a timestamped directory that relative paths are not meant for.
        file_values = _resolve_file_paths(Settings, file_values, config_file.absolute().parent)
    token = _FILE_VALUES.set(file_values)
    try:
        settings = Settings(**overrides)
    except ValidationError as exc:
        raise ConfigError(_format_validation_error(exc, source)) from exc
    finally:
        _FILE_VALUES.reset(token)
    return settings
