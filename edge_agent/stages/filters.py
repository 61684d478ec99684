"""Per-camera detection filters: a camera's own score bar and classes, after decoding."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from edge_agent.stages.base import Work
from schemas import Detection


@dataclass(frozen=True)
class DetectionFilter:
    """A camera's own view of the detector's output: a higher score bar, and the classes it cares about.
    (The decoder's own threshold applies first, so a camera can only raise it.)"""

    min_score: float | None = None
    labels: frozenset[str] | None = None

    def apply(self, detections: list[Detection]) -> list[Detection]:
        return [d for d in detections if (self.min_score is None or d.score >= self.min_score)
                and (self.labels is None or d.label in self.labels)]


class CameraFilters:
    """Applies ``filters`` (by stream id; the pipeline owns the mapping and may change it at run time)."""

    name = "filter"

    def __init__(self, filters: Mapping[str, DetectionFilter]) -> None:
        self.filters = filters

    def process(self, work: Work) -> None:
        if not self.filters:
            return
        for f in work.batch.frames:
            rule = self.filters.get(f.stream_id)
            if rule is not None:
                f.detections = rule.apply(f.detections)

    def close(self) -> None:
        pass
