"""The controller's one settings tree: ``--config controller.yml``, then ``EDGEBATCH_*`` variables, then flags.

```yaml
broker: {url: "mqtt://controller@mosquitto:1883", password_file: /run/secrets/controller_mqtt_password}
controller: {prefix: edgebatch, ownership: hrw, heartbeat_s: 1}
policy:
  name: deadline
  deadline: {slo_ms: 500, ladder: [1, 2, 4, 8, 16, 32]}   # each policy's own settings, under its name
http: {address: "0.0.0.0:8080", token_file: /run/secrets/http_token}
```

``cloud-controller --config controller.yml --print-config`` shows every effective value and its origin.
"""

from __future__ import annotations

import dataclasses
import socket
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from cloud_controller.policies import DEFAULT_POLICY, POLICIES, BatchPolicy, make_policy
from mqtt_bus.broker_section import BROKER_ENV_NAMES, BROKER_FLAG_KEYS
from mqtt_bus.broker_section import BrokerSection as SharedBrokerSection
from schemas import DEFAULT_PREFIX
from schemas.topics import Topics, check_segment


def default_id() -> str:
    name = "".join(c if c.isalnum() or c in "_.:-" else "-" for c in socket.gethostname())[:100]
    return f"controller-{name or 'host'}"


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class BrokerSection(SharedBrokerSection):
    url: str = Field(default="mqtt://127.0.0.1:1883", description="mqtt://[user@]host[:port] or mqtts://")


class ReplicaSection(Section):
    id: str = Field(default_factory=default_id, description="replica id, unique among the replicas")
    prefix: str = Field(default=DEFAULT_PREFIX, description="MQTT topic prefix")
    ownership: Literal["hrw", "single", "shared-hash"] = "hrw"
    share_group: str = "edgebatch-controllers"
    heartbeat_s: float = Field(default=1.0, ge=0.05, le=60)
    profile_interval_s: float = Field(default=2.0, ge=0, le=3600)
    fleet_interval_s: float = Field(default=10.0, ge=0.5, le=86_400)
    pending_timeout_s: float = Field(default=120.0, gt=0, le=86_400)
    refusal_hold_s: float = Field(default=600.0, ge=0, le=86_400 * 7)

    @field_validator("id", "share_group")
    @classmethod
    def _one_segment(cls, value: str) -> str:
        return check_segment(value, "controller id")

    @field_validator("prefix")
    @classmethod
    def _a_prefix(cls, value: str) -> str:
        Topics(value)
        return value


class PolicySection(BaseModel):
    """``name`` picks the policy; a mapping under each policy's key holds that policy's own settings
    (its config dataclass's fields), so switching policy keeps each one's tuning."""

    model_config = ConfigDict(extra="allow", frozen=True)
    name: str = Field(default=DEFAULT_POLICY, description="; ".join(f"{k}: {s.summary}" for k, s in POLICIES.items()))

    @model_validator(mode="after")
    def _known_policies_and_settings(self) -> PolicySection:
        if self.name not in POLICIES:
            raise ValueError(f"unknown policy {self.name!r}; known: {', '.join(POLICIES)}")
        for key, value in (self.model_extra or {}).items():
            if key not in POLICIES:
                raise ValueError(f"policy.{key}: unknown key (policies: {', '.join(POLICIES)})")
            if not isinstance(value, dict):
                raise ValueError(f"policy.{key}: expected the policy's settings as a mapping")
            fields = {f.name for f in dataclasses.fields(POLICIES[key].config_type)}
            unknown = sorted(set(value) - fields)
            if unknown:
                raise ValueError(f"policy.{key}.{unknown[0]}: unknown key (policy {key} takes: "
                                 f"{', '.join(sorted(fields))})")
        return self

    def settings_of(self, name: str) -> dict[str, Any]:
        return dict((self.model_extra or {}).get(name) or {})

    def build(self) -> BatchPolicy:
        """The chosen policy with its settings; ValueError (one line) if one is out of its range."""
        params = self.settings_of(self.name)
        if isinstance(params.get("ladder"), list):
            params["ladder"] = tuple(params["ladder"])
        try:
            return make_policy(self.name, **params)
        except TypeError as exc:
            raise ValueError(f"policy.{self.name}: {exc}") from None


class HttpSection(Section):
    address: str = Field(default="127.0.0.1:8080", description="HOST:PORT of the fleet page and /metrics, or off")
    token_file: str | None = Field(default=None, description="token the page, /api and /metrics then require")


class ControllerConfig(Section):
    broker: BrokerSection = Field(default_factory=BrokerSection)
    controller: ReplicaSection = Field(default_factory=ReplicaSection)
    policy: PolicySection = Field(default_factory=PolicySection)
    http: HttpSection = Field(default_factory=HttpSection)


ENV_NAMES: dict[str, str] = {
    **BROKER_ENV_NAMES,
    "EDGEBATCH_PREFIX": "controller.prefix",
    "EDGEBATCH_CONTROLLER_ID": "controller.id",
    "EDGEBATCH_POLICY": "policy.name",
    "EDGEBATCH_HTTP": "http.address",
    "EDGEBATCH_HTTP_TOKEN_FILE": "http.token_file",
}

# argparse destination -> (key, flag). Policy parameters (--ladder, --slo-ms, --memory-threshold) go
# under the chosen policy's own key: see cli.policy_flags.
FLAG_KEYS: dict[str, tuple[str, str]] = {
    **BROKER_FLAG_KEYS,
    "prefix": ("controller.prefix", "--prefix"),
    "id": ("controller.id", "--id"),
    "ownership": ("controller.ownership", "--ownership"),
    "share_group": ("controller.share_group", "--share-group"),
    "heartbeat_s": ("controller.heartbeat_s", "--heartbeat-s"),
    "profile_interval_s": ("controller.profile_interval_s", "--profile-interval-s"),
    "fleet_interval": ("controller.fleet_interval_s", "--fleet-interval"),
    "pending_timeout": ("controller.pending_timeout_s", "--pending-timeout"),
    "refusal_hold": ("controller.refusal_hold_s", "--refusal-hold"),
    "policy": ("policy.name", "--policy"),
    "http": ("http.address", "--http"),
    "http_token_file": ("http.token_file", "--http-token-file"),
}

POLICY_FLAGS: dict[str, tuple[str, str]] = {  # dest -> (the policy's parameter, flag)
    "ladder": ("ladder", "--ladder"),
    "memory_threshold": ("memory_threshold", "--memory-threshold"),
    "slo_ms": ("slo_ms", "--slo-ms"),
}
