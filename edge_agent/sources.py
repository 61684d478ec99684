"""Video sources: files, camera indexes and network URLs through OpenCV, read off the event loop.

A source is opened and read on threads (both block). Files are opened up front and fail fast (a missing
file is a typo, not an outage); live sources (cameras, network URLs) are connected by the pipeline, which
reopens them with backoff when they fail to open or drop (see ``Pipeline``). ``SourceHealth`` is the state of
that link, one per source.
"""

from __future__ import annotations

import asyncio
import logging
import random
import re
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import cv2
import numpy as np

from edge_agent.errors import SourceError
from mqtt_bus.secrets import redact_url
from schemas import ConnectionState
from schemas.messages import MAX_ERROR_CHARS, StreamSpec

log = logging.getLogger(__name__)

NETWORK_SCHEMES = ("rtsp://", "rtsps://", "http://", "https://", "rtmp://", "udp://", "tcp://")
MAX_CONSECUTIVE_READ_FAILURES = 25
DEFAULT_FPS = 25.0  # a stream's rate until it has been opened (admission needs one), unless --fps says
# OpenCV's FFMPEG backend honours both (checked: a server that accepts and never answers fails the open after
# the timeout; a stream that stops sending fails the read). Without them an open of a dead camera behind a
# firewall that drops packets can block for the TCP timeout, a minute or more.
OPEN_TIMEOUT_MS = 5000
READ_TIMEOUT_MS = 5000

_STREAM_ID = re.compile(r"^[A-Za-z0-9_.:-]{1,64}$")  # schemas' StreamId
def _is_camera_index(uri: str) -> bool:
    return uri.isdigit()


def _is_network(uri: str) -> bool:
    return uri.lower().startswith(NETWORK_SCHEMES)


def is_live(uri: str) -> bool:
    """A camera index or a network URL: it may come and go, so it is reconnected rather than failed."""
    return _is_camera_index(uri) or _is_network(uri)


def redact(uri: str) -> str:
    """The URI with any password replaced (it goes to logs and to the cloud in telemetry): the userinfo
    ends at the last '@', so a password holding '/' or '@' is hidden whole."""
    return redact_url(uri) if "://" in uri else uri


def one_line(text: str, limit: int = MAX_ERROR_CHARS) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


@dataclass
class SourceInfo:
    uri: str
    stream_id: str
    fps: float
    width: int
    height: int
    frame_count: int | None  # None for live sources
    live: bool


@dataclass
class SourceHealth:
    """The link to one source, as the pipeline's reader of that source sees it (its sole writer)."""

    state: ConnectionState = "connecting"
    since: float = field(default_factory=time.time)  # unix time it entered ``state``
    reconnects: int = 0  # attempts to reopen after a failed open or a drop
    failures: int = 0  # failed opens in a row: the backoff's step
    last_error: str = ""  # kept after a recovery: the last thing that went wrong

    def enter(self, state: ConnectionState, error: str | None = None) -> None:
        if state != self.state:
            self.state, self.since = state, time.time()
        if error is not None:
            self.last_error = one_line(error)

    def snapshot(self) -> SourceHealth:
        return replace(self)


@dataclass(frozen=True)
class Backoff:
    """Delay before reopening a source after ``failures`` failed attempts in a row (0: it had been live and
    dropped): ``initial_s`` doubling to ``max_s``, times a random factor in ``jitter`` so that cameras that
    fell together (a switch rebooting) do not come back in lockstep."""

    initial_s: float = 0.5
    max_s: float = 30.0
    factor: float = 2.0
    jitter: tuple[float, float] = (0.5, 1.5)

    def delay(self, failures: int, rng: random.Random | None = None) -> float:
        base = min(self.max_s, self.initial_s * self.factor ** max(0, failures - 1))
        return base * (rng or random).uniform(*self.jitter)


class VideoSource:
    """One stream. ``open()`` and ``read()`` block: the pipeline runs them in a thread."""

    def __init__(self, uri: str, stream_id: str, fps: float | None = None, loop: bool = False,
                 deadline_ms: float | None = None) -> None:
        self.uri = uri
        self.stream_id = stream_id
        self._fps_override = fps
        self.loop = loop
        self.deadline_ms = deadline_ms  # None: the pipeline's default
        self.live = is_live(uri)
        self.open_timeout_ms = OPEN_TIMEOUT_MS
        self.read_timeout_ms = READ_TIMEOUT_MS
        self._cap: cv2.VideoCapture | None = None
        self._first: np.ndarray | None = None
        self.info: SourceInfo | None = None
        self.health = SourceHealth()
        self.corrupt = 0
        self._position = 0
        self._closed = False
        # read() runs on an executor thread that a cancelled pipeline cannot stop; close() must wait
        # for it, since releasing a VideoCapture in the middle of a read crashes OpenCV.
        self._lock = threading.Lock()

    @property
    def nominal_fps(self) -> float:
        """The rate it is read at: as opened, else as asked for, else ``DEFAULT_FPS`` (not opened yet)."""
        if self.info is not None:
            return self.info.fps
        return self._fps_override or DEFAULT_FPS

    @property
    def is_open(self) -> bool:
        return self._cap is not None

    def _capture(self) -> cv2.VideoCapture:
        uri = self.uri
        if _is_camera_index(uri):
            return cv2.VideoCapture(int(uri))
        if _is_network(uri):
            return cv2.VideoCapture(uri, cv2.CAP_FFMPEG, [cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, self.open_timeout_ms,
                                                         cv2.CAP_PROP_READ_TIMEOUT_MSEC, self.read_timeout_ms])
        return cv2.VideoCapture(uri)

    def open(self) -> SourceInfo:
        """Open (or reopen, after a drop) and decode the first frame. Raises SourceError."""
        uri = self.uri
        if not self.live:
            path = Path(uri)
            if not path.exists():
                raise SourceError(uri, "file not found")
            if not path.is_file():
                raise SourceError(uri, "not a file")
        shown = redact(uri)
        try:
            cap = self._capture()
        except cv2.error as exc:
            raise SourceError(shown, f"OpenCV: {one_line(str(exc))}") from exc
        if not cap.isOpened():
            cap.release()
            what = "cannot connect" if _is_network(uri) else "cannot open camera" if self.live else "unreadable video"
            raise SourceError(shown, what)
        ok, first = cap.read()
        if not ok or first is None:
            cap.release()
            raise SourceError(shown, "opened but no frame could be decoded")
        fps = self._fps_override or cap.get(cv2.CAP_PROP_FPS) or DEFAULT_FPS
        if not 0.1 <= fps <= 1000:
            fps = DEFAULT_FPS
        count = int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) if not self.live else None
        with self._lock:
            if self._closed:  # closed while this open ran on its thread
                cap.release()
                raise SourceError(shown, "closed")
            if self._cap is not None:
                self._cap.release()
            self._cap = cap
            self._first = first
            self.info = SourceInfo(uri, self.stream_id, fps, first.shape[1], first.shape[0], count or None,
                                   self.live)
        return self.info

    def read(self) -> np.ndarray | None:
        """Next frame, or None at the end of the stream, once dropped (a live source) or once closed.
        Unreadable frames are skipped and counted."""
        with self._lock:
            if self._cap is None:
                return None
            return self._read_locked()

    def _read_locked(self) -> np.ndarray | None:
        assert self._cap is not None and self.info is not None, "open() first"
        if self._first is not None:
            frame, self._first = self._first, None
            self._position = 1
            return frame
        failures = 0
        read_since_rewind = True
        while True:
            ok, frame = self._cap.read()
            if ok and frame is not None and frame.size:
                if failures:  # unreadable frames with readable ones after them: corrupt, skipped
                    self.corrupt += failures
                    log.warning("%s: %d unreadable frame(s) near %d skipped", redact(self.uri), failures,
                                self._position)
                self._position += failures + 1
                return frame
            failures += 1
            if _is_network(self.uri):
                # FFMPEG conceals damaged packets: a failed grab on a network stream is its end (the server
                # went away, or the read timed out), not a bad frame to skip.
                return None
            count = self.info.frame_count
            at_end = count is not None and self._position + failures >= count
            if at_end or failures >= MAX_CONSECUTIVE_READ_FAILURES:
                # The end of what can be read (a container may declare more frames than it holds): the
                # failures since the last good frame were no frames at all.
                if self.loop and count is not None and read_since_rewind:
                    self._cap.set(cv2.CAP_PROP_POS_FRAMES, 0)
                    self._position, failures, read_since_rewind = 0, 0, False
                    continue
                return None

    def disconnect(self) -> None:
        """Release the capture after a drop; ``open()`` may be called again."""
        with self._lock:
            if self._cap is not None:
                self._cap.release()
                self._cap = None

    def close(self) -> None:
        with self._lock:
            self._closed = True
            if self._cap is not None:
                self._cap.release()
                self._cap = None


def parse_source_arg(text: str) -> tuple[str | None, str]:
    """``--source [NAME=]PATH_OR_URL``: a stream id given, or None (then ``s<position>``). Only a name that is a
    valid stream id counts, so URLs with ``=`` in their query (``rtsp://h/x?a=b``) pass whole."""
    name, sep, uri = text.partition("=")
    if sep and _STREAM_ID.match(name) and uri and "://" not in name:
        return name, uri
    return None, text


def make_sources(streams: Sequence[str | tuple[str | None, str]], fps: float | None = None,
                 loop: bool = False) -> list[VideoSource]:
    """Sources for URIs or (stream id or None, URI) pairs; an id not given is ``s<position>``. Raises
    SourceError on a duplicate id."""
    sources: list[VideoSource] = []
    for i, item in enumerate(streams):
        name, uri = item if isinstance(item, tuple) else (None, item)
        stream_id = name or f"s{i}"
        if any(s.stream_id == stream_id for s in sources):
            raise SourceError(redact(uri), f"stream id {stream_id!r} is used twice (name streams as NAME=URL)")
        sources.append(VideoSource(uri, stream_id, fps=fps, loop=loop))
    return sources


async def open_sources(streams: Sequence[str | tuple[str | None, str]], fps: float | None = None,
                       loop: bool = False) -> list[VideoSource]:
    """Sources for ``streams`` (see ``make_sources``; stream ids default to ``s0, s1, ...``), opened as
    ``open_files`` does."""
    return await open_files(make_sources(streams, fps, loop))


async def open_streams(specs: Sequence[StreamSpec]) -> list[VideoSource]:
    """The streams a settings tree or a desired state names, each with its own rate, deadline and loop,
    opened as ``open_files`` does."""
    return await open_files([VideoSource(s.url, s.stream_id, fps=s.fps, loop=s.loop, deadline_ms=s.deadline_ms)
                             for s in specs])


async def open_files(sources: list[VideoSource]) -> list[VideoSource]:
    """Files are opened here, in threads, concurrently, and the first that cannot be is raised; live
    sources are left to the pipeline, which connects them and keeps reconnecting, so a dead camera does
    not stop the others."""
    files = [s for s in sources if not s.live]
    results = await asyncio.gather(*(asyncio.to_thread(s.open) for s in files), return_exceptions=True)
    errors = [r for r in results if isinstance(r, BaseException)]
    if errors:
        for s in files:
            s.close()
        raise errors[0]
    for s in files:
        s.health.enter("live")
    return sources


def monotonic_to_wall(t_mono: float) -> float:
    return time.time() - (time.monotonic() - t_mono)


__all__ = ["Backoff", "SourceHealth", "SourceInfo", "VideoSource", "is_live", "make_sources",
           "open_sources", "parse_source_arg", "redact"]
