"""Frame sinks: detections as JSON lines, and an annotated MJPG video per stream."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from pathlib import Path
from typing import IO

import cv2

from edge_agent.frames import Frame
from schemas import FrameDetections


def to_message(frame: Frame) -> FrameDetections:
    return FrameDetections(
        stream_id=frame.stream_id, seq=frame.seq, t_capture=frame.wall_capture, detections=frame.detections
    )


class JsonLinesSink:
    """One ``FrameDetections`` JSON object per line."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file: IO[str] = self.path.open("w", encoding="utf-8")

    def _write(self, frames: Sequence[Frame]) -> None:
        self._file.write("".join(to_message(f).model_dump_json() + "\n" for f in frames))

    async def write(self, frames: Sequence[Frame]) -> None:
        await asyncio.to_thread(self._write, frames)

    async def close(self) -> None:
        await asyncio.to_thread(self._file.close)


class AnnotatedVideoSink:
    """Draws boxes and writes ``{directory}/{stream_id}.avi`` (MJPG) for a person to watch."""

    def __init__(self, directory: str | Path, fps: float = 10.0) -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.fps = fps
        self._writers: dict[str, cv2.VideoWriter] = {}

    def _write(self, frames: Sequence[Frame]) -> None:
        for f in frames:
            image = f.image.copy()
            for d in f.detections:
                x1, y1, x2, y2 = (int(v) for v in d.box)
                cv2.rectangle(image, (x1, y1), (x2, y2), (0, 200, 0), 2)
                cv2.putText(image, f"{d.label} {d.score:.2f}", (x1, max(12, y1 - 4)),
                            cv2.FONT_HERSHEY_SIMPLEX, 0.5, (0, 200, 0), 1, cv2.LINE_AA)
            writer = self._writers.get(f.stream_id)
            if writer is None:
                h, w = image.shape[:2]
                path = str(self.directory / f"{f.stream_id}.avi")
                writer = cv2.VideoWriter(path, cv2.VideoWriter.fourcc(*"MJPG"), self.fps, (w, h))
                self._writers[f.stream_id] = writer
            writer.write(image)

    async def write(self, frames: Sequence[Frame]) -> None:
        await asyncio.to_thread(self._write, frames)

    async def close(self) -> None:
        for w in self._writers.values():
            w.release()
        self._writers.clear()
