"""What an operator may tell the controller about one agent: pin a batch size (the policy holds off),
or hand the agent back to the policy. The refusals say why, for the HTTP side to show."""

from __future__ import annotations

from dataclasses import dataclass

OPERATOR = "operator"  # the prefix of the reason of every order an operator gave ("operator: pinned ...")
MAX_REASON = 500


@dataclass(frozen=True)
class Pin:
    """The operator holds the agent at ``batch_size``; the policy decides nothing for it until released."""

    batch_size: int
    reason: str
    since: float  # unix time
    generation: int  # the order that pinned it


class OperatorRefused(Exception):
    """An operator's order that is not given; ``status`` is the HTTP status that says why."""

    status = 400

    def __init__(self, agent_id: str, message: str) -> None:
        super().__init__(message)
        self.agent_id = agent_id


class UnknownAgent(OperatorRefused):
    status = 404


class NotHere(OperatorRefused):
    """Another replica decides for the agent, or nothing is pinned to release: a conflict with the state."""

    status = 409


class BadOrder(OperatorRefused):
    status = 400
