"""Audio cache: encoded responses keyed by everything that determines their bytes.

Two levels, both bounded in bytes with least-recently-used eviction: memory, and optionally a directory on disk
(so a restart keeps the cache warm). Identical requests that arrive while the first is still being synthesised
wait for that one synthesis instead of starting their own.

The text in the key is exactly the text the engine receives, with no normalisation: whitespace, newlines
(sentence breaks for the frontend) and Unicode forms can all change the audio, so the cache must never merge them.

On disk the cache lives in a subdirectory of ``cache.disk_dir`` that it created and marked as its own, and it only
ever deletes names it writes itself (``<sha256>.audio`` and ``.tmp-<uuid>``), so pointing ``disk_dir`` at a shared
folder cannot cost anyone their files. Entries are written to a temporary name and renamed into place, so a crash
never leaves a half-written entry under a real name; leftovers of such crashes are deleted at startup. Nothing is
written when the cache is off or has no ``disk_dir``.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import hashlib
import json
import logging
import os
import re
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from tts_server.config import Settings

log = logging.getLogger("tts_server.cache")

_SUFFIX: Final = ".audio"
_TMP_PREFIX: Final = ".tmp-"
_MAGIC: Final = b"TTSC1\n"
#: The subdirectory of ``cache.disk_dir`` the cache owns, and the file that proves it created it.
DISK_SUBDIR: Final = "tts-audio-cache"
_MARKER: Final = ".tts-server-audio-cache"
_MARKER_TEXT: Final = (b"Created by tts-server for its audio cache (cache.disk_dir). tts-server deletes files named "
                       b"<sha256>.audio and .tmp-<uuid> here.\n")
_ENTRY_NAME = re.compile(r"([0-9a-f]{64})\.audio")
_TMP_NAME = re.compile(r"\.tmp-[0-9a-f]{32}")


class CacheDirError(RuntimeError):
    """The cache's disk directory exists but was not created by the cache: it refuses to delete anything there."""


def model_revision(settings: Settings) -> str:
    """What identifies the model's output: engine, model id, local files (path, size, mtime) of the model
    directory and of every ``[[voices.extra]]`` voice, and the operator's ``cache.revision``, so replacing weights
    in place never serves stale audio."""
    parts: list[str] = [settings.engine.name, settings.model.model_id, settings.cache.revision]
    model_dir = settings.model.model_dir
    if model_dir is not None:
        parts.append(str(model_dir.resolve()))
        parts += _file_stamps(model_dir, model_dir)
    for extra in settings.voices.extra:
        parts.append(f"extra:{extra.name}")
        for path in (extra.am_config, extra.am_checkpoint, extra.voc_config, extra.voc_checkpoint, extra.se,
                     extra.mvn, extra.dict_dir, extra.audio_config):
            if path is not None:
                parts += _file_stamps(path, None)
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:16]


def _file_stamps(path: Path, relative_to: Path | None) -> list[str]:
    """``name:size:mtime`` of a file, or of every file under a directory (names relative to ``relative_to``)."""
    out: list[str] = []
    with contextlib.suppress(OSError):
        files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
        for file in files:
            st = file.stat()
            name = file.relative_to(relative_to) if relative_to is not None else file.resolve()
            out.append(f"{name}:{st.st_size}:{st.st_mtime_ns}")
    return out


@dataclass(frozen=True)
class CacheKey:
    text: str
    input_format: str
    voice: str
    emotion: str
    speed: float
    format: str
    sample_rate: int
    revision: str
    #: Fingerprint of the user lexicon's entries: a lexicon change must never be answered with audio read the
    #: old way. Empty without a lexicon (and then left out, so existing disk entries keep their digests).
    lexicon: str = ""
    #: Prosody (pitch shift, gain in dB): in the digest only when set, for the same reason as ``lexicon``.
    pitch: float = 0.0
    volume_db: float = 0.0
    #: A stochastic voice's seed (unseeded audio of such a voice is never cached, so it has no key); in the
    #: digest only when set, like ``lexicon``.
    seed: int | None = None
    #: The entry holds the timestamps document too (``CachedAudio.timestamps``): a request for timings is never
    #: answered from an entry without them, nor an audio-only request from one with them.
    timestamps: bool = False

    def digest(self) -> str:
        fields = [self.text, self.input_format, self.voice, self.emotion, repr(float(self.speed)), self.format,
                  self.sample_rate, self.revision]
        if self.lexicon:
            fields.append(self.lexicon)
        if self.pitch != 0.0 or self.volume_db != 0.0:
            fields.append(f"prosody:{float(self.pitch)!r}:{float(self.volume_db)!r}")
        if self.seed is not None:
            fields.append(f"seed:{int(self.seed)}")
        if self.timestamps:
            fields.append("timestamps")
        # ASCII escapes: any Python str hashes, even one no request validator should have let through.
        return hashlib.sha256(json.dumps(fields).encode()).hexdigest()


@dataclass(frozen=True)
class CachedAudio:
    """An encoded response body and what its headers need."""

    data: bytes
    media_type: str
    sample_rate: int
    audio_seconds: float
    #: The timestamps document (JSON text) of a timestamps request; empty otherwise.
    timestamps: str = ""

    @property
    def size(self) -> int:
        return len(self.data) + len(self.timestamps)

    def to_bytes(self) -> bytes:
        fields: dict[str, object] = {"media_type": self.media_type, "sample_rate": self.sample_rate,
                                     "audio_seconds": self.audio_seconds}
        if self.timestamps:
            fields["timestamps"] = self.timestamps
        return _MAGIC + json.dumps(fields).encode() + b"\n" + self.data

    @classmethod
    def from_bytes(cls, raw: bytes) -> CachedAudio:
        if not raw.startswith(_MAGIC):
            raise ValueError("not a cache entry")
        meta, sep, data = raw[len(_MAGIC):].partition(b"\n")
        if not sep:
            raise ValueError("truncated cache entry")
        fields = json.loads(meta)
        return cls(data, str(fields["media_type"]), int(fields["sample_rate"]), float(fields["audio_seconds"]),
                   str(fields.get("timestamps", "")))


class _MemoryLRU:
    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.bytes = 0
        self._items: collections.OrderedDict[str, CachedAudio] = collections.OrderedDict()

    def __len__(self) -> int:
        return len(self._items)

    def get(self, digest: str) -> CachedAudio | None:
        item = self._items.get(digest)
        if item is not None:
            self._items.move_to_end(digest)
        return item

    def put(self, digest: str, item: CachedAudio) -> None:
        if item.size > self.max_bytes:
            return
        old = self._items.pop(digest, None)
        if old is not None:
            self.bytes -= old.size
        self._items[digest] = item
        self.bytes += item.size
        while self.bytes > self.max_bytes:
            _, evicted = self._items.popitem(last=False)
            self.bytes -= evicted.size


class _DiskLRU:
    """Files ``<digest>.audio`` in a directory the cache owns (see ``_claim``). The index lives in memory and is
    rebuilt from the directory at startup; only the event loop thread touches it, file I/O runs in threads."""

    def __init__(self, directory: Path, max_bytes: int) -> None:
        self.directory = directory
        self.max_bytes = max_bytes
        self.bytes = 0
        self._sizes: collections.OrderedDict[str, int] = collections.OrderedDict()

    def __len__(self) -> int:
        return len(self._sizes)

    def scan(self) -> None:
        """Rebuild the index (oldest access first), delete interrupted writes and enforce the cap."""
        self._claim()
        found: list[tuple[float, str, int]] = []
        for entry in os.scandir(self.directory):
            # Only names this class writes; anything else (even ``x.audio``) belongs to someone else.
            if _TMP_NAME.fullmatch(entry.name) and entry.is_file(follow_symlinks=False):
                with contextlib.suppress(OSError):
                    os.unlink(entry.path)
            elif (m := _ENTRY_NAME.fullmatch(entry.name)) and entry.is_file(follow_symlinks=False):
                st = entry.stat(follow_symlinks=False)
                found.append((st.st_mtime, m.group(1), st.st_size))
        for _, digest, size in sorted(found):
            self._sizes[digest] = size
            self.bytes += size
        for path in self._evict():
            with contextlib.suppress(OSError):
                path.unlink()

    def _claim(self) -> None:
        """Create the directory with its marker, or check the marker of an existing one (an empty one, e.g. a
        volume mounted there, is adopted)."""
        marker = self.directory / _MARKER
        if self.directory.is_dir() and not marker.is_file() and any(self.directory.iterdir()):
            raise CacheDirError(f"{self.directory} exists but was not created by tts-server's audio cache (no "
                                f"{_MARKER} file in it); move it away or set another cache.disk_dir")
        self.directory.mkdir(parents=True, exist_ok=True)
        if not marker.is_file():
            marker.write_bytes(_MARKER_TEXT)

    def _path(self, digest: str) -> Path:
        return self.directory / f"{digest}{_SUFFIX}"

    def _evict(self) -> list[Path]:
        doomed = []
        while self.bytes > self.max_bytes and self._sizes:
            digest, size = self._sizes.popitem(last=False)
            self.bytes -= size
            doomed.append(self._path(digest))
        return doomed

    async def get(self, digest: str) -> CachedAudio | None:
        if digest not in self._sizes:
            return None
        self._sizes.move_to_end(digest)
        path = self._path(digest)
        try:
            raw = await asyncio.to_thread(_read_and_touch, path)
            return CachedAudio.from_bytes(raw)
        except (OSError, ValueError, KeyError) as exc:
            # Deleted by eviction meanwhile, or damaged: a miss, and forget it.
            log.warning("dropping unreadable cache file %s: %s", path.name, exc)
            self._forget(digest)
            with contextlib.suppress(OSError):
                await asyncio.to_thread(path.unlink)
            return None

    def _forget(self, digest: str) -> None:
        size = self._sizes.pop(digest, None)
        if size is not None:
            self.bytes -= size

    async def put(self, digest: str, item: CachedAudio) -> None:
        raw = item.to_bytes()
        if len(raw) > self.max_bytes:
            return
        try:
            await asyncio.to_thread(_write_atomic, self.directory, self._path(digest), raw)
        except OSError as exc:
            # A full or read-only disk must not fail the request that produced the audio.
            log.warning("cannot write cache file: %s", exc)
            return
        self._forget(digest)
        self._sizes[digest] = len(raw)
        self.bytes += len(raw)
        doomed = self._evict()
        if doomed:
            await asyncio.to_thread(_unlink_all, doomed)


def _read_and_touch(path: Path) -> bytes:
    raw = path.read_bytes()
    # The mtime is the access order a restart rebuilds the LRU from.
    with contextlib.suppress(OSError):
        os.utime(path)
    return raw


def _write_atomic(directory: Path, path: Path, raw: bytes) -> None:
    # No mkdir: a directory removed under a running server is recreated (with its marker) by the next start only.
    tmp = directory / f"{_TMP_PREFIX}{uuid.uuid4().hex}"
    try:
        with open(tmp, "wb") as fh:
            fh.write(raw)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def _unlink_all(paths: list[Path]) -> None:
    for path in paths:
        with contextlib.suppress(OSError):
            path.unlink()


@dataclass
class _Flight:
    task: asyncio.Task[CachedAudio]
    waiters: int = 0


class AudioCache:
    """Bounded two-level audio cache with request coalescing.

    ``get_or_create`` returns ``(audio, hit)``; ``hit`` is True when no synthesis was started for this call (a
    stored entry, or an identical request already in flight).
    """

    def __init__(self, settings: Settings, on_lookup: Callable[[bool], None] | None = None) -> None:
        cfg = settings.cache
        self.revision = model_revision(settings)
        self._memory = _MemoryLRU(cfg.max_bytes)
        self._disk = (_DiskLRU(cfg.disk_dir / DISK_SUBDIR, cfg.disk_max_bytes) if cfg.disk_dir is not None
                      else None)
        self._flights: dict[str, _Flight] = {}
        self._on_lookup = on_lookup

    async def start(self) -> None:
        if self._disk is not None:
            await asyncio.to_thread(self._disk.scan)
            log.info("audio cache on disk: %d entries, %d bytes in %s", len(self._disk), self._disk.bytes,
                     self._disk.directory)

    def key(self, *, text: str, voice: str, emotion: str, speed: float, fmt: str, sample_rate: int,
            input_format: str = "text", lexicon: str = "", pitch: float = 0.0, volume_db: float = 0.0,
            seed: int | None = None, timestamps: bool = False) -> CacheKey:
        return CacheKey(text, input_format, voice, emotion, float(speed), fmt, sample_rate, self.revision, lexicon,
                        float(pitch), float(volume_db), seed, timestamps)

    @property
    def memory_bytes(self) -> int:
        return self._memory.bytes

    @property
    def disk_bytes(self) -> int:
        return self._disk.bytes if self._disk is not None else 0

    async def lookup(self, key: CacheKey, *, count: bool = False) -> CachedAudio | None:
        """A stored entry or None (for streaming requests, which are served from the cache but not stored)."""
        item = await self._lookup(key)
        if count:
            self._count(item is not None)
        return item

    async def _lookup(self, key: CacheKey) -> CachedAudio | None:
        digest = key.digest()
        item = self._memory.get(digest)
        if item is None and self._disk is not None:
            item = await self._disk.get(digest)
            if item is not None:
                self._memory.put(digest, item)
        return item

    async def get_or_create(self, key: CacheKey,
                            produce: Callable[[], Awaitable[CachedAudio]]) -> tuple[CachedAudio, bool]:
        digest = key.digest()
        item = await self._lookup(key)
        if item is not None:
            self._count(True)
            return item, True
        flight = self._flights.get(digest)
        if flight is None:
            # An identical request may have finished while the disk was being read.
            item = self._memory.get(digest)
            if item is not None:
                self._count(True)
                return item, True
        hit = flight is not None
        if flight is None:
            # The synthesis runs as its own task: the first client leaving must not fail the others waiting.
            flight = _Flight(asyncio.create_task(self._produce(digest, produce)))
            self._flights[digest] = flight
        self._count(hit)
        flight.waiters += 1
        try:
            return await asyncio.shield(flight.task), hit
        finally:
            flight.waiters -= 1
            if flight.waiters == 0 and not flight.task.done():
                # Everyone left: stop the synthesis (the producer cancels its pool job).
                flight.task.cancel()

    async def _produce(self, digest: str, produce: Callable[[], Awaitable[CachedAudio]]) -> CachedAudio:
        try:
            item = await produce()
            self._memory.put(digest, item)
            if self._disk is not None:
                await self._disk.put(digest, item)
            return item
        finally:
            self._flights.pop(digest, None)

    def _count(self, hit: bool) -> None:
        if self._on_lookup is not None:
            self._on_lookup(hit)
