"""Topic names: the only place a topic string is built or parsed."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

DEFAULT_PREFIX = "edgebatch"

AgentChannel = Literal["status", "telemetry", "desired", "events", "detections", "profile"]
AGENT_CHANNELS: tuple[AgentChannel, ...] = ("status", "telemetry", "desired", "events", "detections", "profile")
ControllerChannel = Literal["alive"]

_SEGMENT = re.compile(r"^[A-Za-z0-9_.:-]{1,128}$")


class TopicError(ValueError):
    """A topic or a topic segment that this project does not produce."""


def check_segment(value: str, what: str) -> str:
    """Reject ids that would break the topic tree (wildcards, slashes, empty)."""
    if not _SEGMENT.match(value):
        raise TopicError(f"{what} {value!r} must be 1-128 characters of A-Z a-z 0-9 _ . : -")
    return value


@dataclass(frozen=True)
class AgentTopic:
    agent_id: str
    channel: AgentChannel


@dataclass(frozen=True)
class ModelTopic:
    name: str


@dataclass(frozen=True)
class ControllerTopic:
    controller_id: str
    channel: ControllerChannel


@dataclass(frozen=True)
class Topics:
    """Builds and parses every topic under one prefix (default ``edgebatch``)."""

    prefix: str = DEFAULT_PREFIX

    def __post_init__(self) -> None:
        for part in self.prefix.split("/"):
            check_segment(part, "topic prefix segment")

    def agent(self, agent_id: str, channel: AgentChannel) -> str:
        return f"{self.prefix}/agents/{check_segment(agent_id, 'agent id')}/{channel}"

    def status(self, agent_id: str) -> str:
        return self.agent(agent_id, "status")

    def telemetry(self, agent_id: str) -> str:
        return self.agent(agent_id, "telemetry")

    def desired(self, agent_id: str) -> str:
        return self.agent(agent_id, "desired")

    def events(self, agent_id: str) -> str:
        return self.agent(agent_id, "events")

    def detections(self, agent_id: str) -> str:
        return self.agent(agent_id, "detections")

    def profile(self, agent_id: str) -> str:
        """What the controller replica owning the agent learned about it (retained ``PolicyState``)."""
        return self.agent(agent_id, "profile")

    def controller_alive(self, controller_id: str) -> str:
        """A controller replica's retained heartbeat (``ControllerAlive``); its last will says offline."""
        return f"{self.prefix}/controllers/{check_segment(controller_id, 'controller id')}/alive"

    def all_controllers_alive(self) -> str:
        return f"{self.prefix}/controllers/+/alive"

    def telemetry_agent_id(self, topic: str) -> str | None:
        """The agent id of a telemetry topic by plain string work (no regex): the controller's hot path
        calls it on every message before deciding whether to decode. None if not a telemetry topic."""
        head = self.prefix + "/agents/"
        if not (topic.startswith(head) and topic.endswith("/telemetry")):
            return None
        agent_id = topic[len(head) : -len("/telemetry")]
        if not agent_id or "/" in agent_id:
            return None
        return agent_id

    def model(self, name: str) -> str:
        return f"{self.prefix}/models/{check_segment(name, 'model name')}"

    def all_agents(self, channel: AgentChannel) -> str:
        """Filter matching one channel of every agent."""
        return f"{self.prefix}/agents/+/{channel}"

    def all_models(self) -> str:
        return f"{self.prefix}/models/+"

    @staticmethod
    def shared(group: str, topic_filter: str) -> str:
        """MQTT v5 shared subscription: replicas in one group split the messages."""
        return f"$share/{check_segment(group, 'share group')}/{topic_filter}"

    def parse(self, topic: str) -> AgentTopic | ModelTopic | ControllerTopic:
        """Turn a concrete topic back into what it addresses; TopicError if it is not ours."""
        head = self.prefix + "/"
        if not topic.startswith(head):
            raise TopicError(f"topic {topic!r} is outside prefix {self.prefix!r}")
        parts = topic[len(head) :].split("/")
        if len(parts) == 3 and parts[0] == "agents" and parts[2] in AGENT_CHANNELS:
            channel: AgentChannel = parts[2]
            return AgentTopic(agent_id=check_segment(parts[1], "agent id"), channel=channel)
        if len(parts) == 2 and parts[0] == "models":
            return ModelTopic(name=check_segment(parts[1], "model name"))
        if len(parts) == 3 and parts[0] == "controllers" and parts[2] == "alive":
            return ControllerTopic(controller_id=check_segment(parts[1], "controller id"), channel="alive")
        raise TopicError(f"topic {topic!r} is not an edgebatch topic")
