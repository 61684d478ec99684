"""The ``broker`` section every component's settings tree has, with the variables and flags that set it
(one table for the agent and the controller, built from ``mqtt_bus.args.BROKER_ENV``)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from mqtt_bus.args import BROKER_ENV

# argparse destination -> (field of the section, the flag as typed)
_FIELDS = {"broker": ("url", "--broker"), "broker_password_file": ("password_file", "--broker-password-file"),
           "ca_file": ("ca_file", "--ca-file"), "client_cert": ("client_cert", "--client-cert"),
           "client_key": ("client_key", "--client-key")}

BROKER_ENV_NAMES: dict[str, str] = {BROKER_ENV[dest]: f"broker.{name}" for dest, (name, _) in _FIELDS.items()}
BROKER_FLAG_KEYS: dict[str, tuple[str, str]] = {
    dest: (f"broker.{name}", flag) for dest, (name, flag) in _FIELDS.items()}


class BrokerSection(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    url: str | None = Field(default=None, description="mqtt://[user@]host[:port] or mqtts://")
    password_file: str | None = Field(default=None, description="file whose first line is the password")
    ca_file: str | None = Field(default=None, description="CA bundle for an mqtts:// broker")
    client_cert: str | None = Field(default=None, description="PEM client certificate for an mqtts:// broker")
    client_key: str | None = Field(default=None, description="the client certificate's key")
