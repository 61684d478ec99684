"""Video sources: files, camera indexes and network URLs through OpenCV, read off the event loop."""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from edge_agent.errors import SourceError
from schemas.messages import StreamSpec

log = logging.getLogger(__name__)

NETWORK_SCHEMES = ("rtsp://", "rtsps://", "http://", "https://", "rtmp://", "udp://", "tcp://")
MAX_CONSECUTIVE_READ_FAILURES = 25


def _is_camera_index(uri: str) -> bool:
    return uri.isdigit()


def _is_network(uri: str) -> bool:
    return uri.lower().startswith(NETWORK_SCHEMES)


@dataclass
class SourceInfo:
    uri: str
    stream_id: str
    fps: float
    width: int
    height: int
    frame_count: int | None  # None for live sources
    live: bool


class VideoSource:
    """One stream. ``open()`` and ``read()`` block: the pipeline runs them in a thread."""

    def __init__(self, uri: str, stream_id: str, fps: float | None = None, loop: bool = False,
                 deadline_ms: float | None = None) -> None:
        self.uri = uri
        self.stream_id = stream_id
        self._fps_override = fps
        self.loop = loop
        self.deadline_ms = deadline_ms  # None: the pipeline's default
        self._cap: cv2.VideoCapture | None = None
        self.info: SourceInfo | None = None
        self.corrupt = 0
        self._position = 0
        # read() runs on an executor thread that a cancelled pipeline cannot stop; close() must wait
        # for it, since releasing a VideoCapture in the middle of a read crashes OpenCV.
        self._lock = threading.Lock()

    def open(self) -> SourceInfo:
        uri = self.uri
        live = _is_camera_index(uri) or _is_network(uri)
        if not live:
            path = Path(uri)
            if not path.exists():
                raise SourceError(uri, "file not found")
            if not path.is_file():
                raise SourceError(uri, "not a file")
        cap = cv2.VideoCapture(int(uri) if _is_camera_index(uri) else uri)
        if not cap.isOpened():
            cap.release()
            what = "cannot connect" if _is_network(uri) else "cannot open camera" if live else "unreadable video"
            raise SourceError(uri, what)
        ok, first = cap.read()
        if not ok or first is None:
            cap.release()
            raise SourceError(uri, "opened but no frame could be decoded")
        fps = self._fps_override or cap.get(cv2.CAP_PROP_FPS) or 25.0
        if not 0.1 <= fps <= 1000:
            fps = 25.0
        count = int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) if not live else None
        self._cap = cap
        self._first: np.ndarray | None = first
        self.info = SourceInfo(uri, self.stream_id, fps, first.shape[1], first.shape[0], count or None, live)
        return self.info

    def read(self) -> np.ndarray | None:
        """Next frame, or None at the end of the stream (or once closed). Unreadable frames are
        skipped and counted."""
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
        while True:
            ok, frame = self._cap.read()
            if ok and frame is not None and frame.size:
                self._position += 1
                return frame
            count = self.info.frame_count
            at_end = count is not None and self._position >= count
            if at_end or (count is None and failures >= MAX_CONSECUTIVE_READ_FAILURES):
                if self.loop and count is not None:
                    self._cap.set(cv2.CAP_PROP_POS_FRAMES, 0)
                    self._position = 0
                    continue
                return None
            # A corrupt frame mid-stream: count it, skip it, go on.
            failures += 1
            self.corrupt += 1
            self._position += 1
            log.warning("%s: unreadable frame near %d skipped", self.uri, self._position)
            if failures >= MAX_CONSECUTIVE_READ_FAILURES:
                return None

    def close(self) -> None:
        with self._lock:
            if self._cap is not None:
                self._cap.release()
                self._cap = None


async def open_sources(uris: list[str], fps: float | None = None, loop: bool = False) -> list[VideoSource]:
    """Open every source (in threads, concurrently); stream ids are ``s0, s1, ...``."""
    specs = [StreamSpec(stream_id=f"s{i}", url=uri, fps=fps, loop=loop) for i, uri in enumerate(uris)]
    return await open_streams(specs)


async def open_streams(specs: Sequence[StreamSpec]) -> list[VideoSource]:
    """Open the streams a settings tree or a desired state names, each with its own rate, deadline and loop."""
    sources = [VideoSource(s.url, s.stream_id, fps=s.fps, loop=s.loop, deadline_ms=s.deadline_ms) for s in specs]
    results = await asyncio.gather(*(asyncio.to_thread(s.open) for s in sources), return_exceptions=True)
    errors = [r for r in results if isinstance(r, BaseException)]
    if errors:
        for s in sources:
            s.close()
        raise errors[0]
    return sources


def monotonic_to_wall(t_mono: float) -> float:
    return time.time() - (time.monotonic() - t_mono)
