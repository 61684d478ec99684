"""What the Agent (MQTT side) runs with. Built from the settings tree (edge_agent/config.py), which
alone reads files, environment variables and flags; tests and benches build it directly."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, field_validator

from edge_agent.config import default_agent_id
from mqtt_bus import BrokerSettings
from schemas import DEFAULT_PREFIX
from schemas.topics import check_segment


class AgentSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    broker_url: str = Field(default="mqtt://127.0.0.1:1883", description="mqtt://[user:pass@]host[:port]")
    broker_ca_file: str | None = Field(default=None, description="CA bundle for mqtts:// brokers")
    broker_password_file: str | None = Field(default=None, description="file whose first line is the broker "
                                             "password (the URL then names only the user)")
    broker_client_cert: str | None = Field(default=None, description="PEM client certificate for mqtts://")
    broker_client_key: str | None = Field(default=None, description="the client certificate's key")
    agent_id: str = Field(default_factory=default_agent_id, description="this agent's id on MQTT")
    prefix: str = Field(default=DEFAULT_PREFIX, description="topic prefix")
    telemetry_interval_s: float = Field(default=1.0, gt=0, le=3600, description="seconds between telemetry")
    publish_detections: bool = Field(default=False, description="publish per-frame detections on MQTT")
    connect_wait_s: float = Field(default=3.0, ge=0, description="how long inference waits for the broker at start")

    def broker(self) -> BrokerSettings:
        """The connection these settings describe; ValueError (one line, no password shown) if they clash."""
        return BrokerSettings.build(self.broker_url, ca_file=self.broker_ca_file,
                                    password_file=self.broker_password_file,
                                    client_cert=self.broker_client_cert, client_key=self.broker_client_key)

    @field_validator("agent_id")
    @classmethod
    def _agent_id_is_a_topic_segment(cls, value: str) -> str:
        return check_segment(value, "agent id")
