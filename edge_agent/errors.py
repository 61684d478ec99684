"""Errors of the edge agent; third-party errors are translated here with ``raise ... from``."""

from __future__ import annotations

from schemas import RefusalReason


class EdgeAgentError(Exception):
    """Base of every error the agent reports to a user."""


class ModelError(EdgeAgentError):
    """A model file that is missing, unreadable, or does not fit the decoder."""

    def __init__(self, path: str, problem: str) -> None:
        super().__init__(f"model {path}: {problem}")
        self.path = path
        self.problem = problem


class SourceError(EdgeAgentError):
    """A video source that cannot be opened or read."""

    def __init__(self, uri: str, problem: str) -> None:
        super().__init__(f"source {uri}: {problem}")
        self.uri = uri
        self.problem = problem


class BackendUnavailable(EdgeAgentError):
    """An inference backend or probe whose runtime is not installed on this device."""


class SwapError(EdgeAgentError):
    """An engine swap that was refused or failed; the serving engine keeps serving."""


class OrderRefused(SwapError):
    """A desired state the agent will not apply, with a machine-readable reason for the controller."""

    def __init__(self, reason: RefusalReason, detail: str) -> None:
        super().__init__(detail)
        self.reason: RefusalReason = reason
        self.detail = detail


class OutOfMemoryAtBatchSize(SwapError):
    """The device ran out of memory inferring a batch size: that size is refused, a smaller one serves."""

    def __init__(self, batch_size: int, fallback: int, figure: str) -> None:
        super().__init__(f"batch size {batch_size} ran out of device memory ({figure}); serving batch size "
                         f"{fallback} instead")
        self.batch_size = batch_size
        self.fallback = fallback
