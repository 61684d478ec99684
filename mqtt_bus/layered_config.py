"""One settings tree from four layers: defaults < YAML file < environment variables < command-line flags.

A component describes its tree as a pydantic model (``extra="forbid"`` everywhere, so a typo'd key is
an error), names the environment variables it reads (a table: variable -> dotted key) and which flags
set which keys; ``load_layered`` merges the layers, validates once, and remembers where every value
came from, so ``config --print`` can say it. Every mistake is a ``ConfigError`` of one line that names
the key (and the layer it came from).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Generic, TypeVar

import yaml
from pydantic import BaseModel, ValidationError

from mqtt_bus.secrets import redact_url

Model = TypeVar("Model", bound=BaseModel)

DEFAULT = "default"


class ConfigError(ValueError):
    """A setting that cannot be used: one line, naming the key."""


@dataclass
class Layered(Generic[Model]):
    config: Model
    file: Path | None
    origin: dict[str, str] = field(default_factory=dict)  # dotted key -> "flag --x" / "env X" / "file f" / default

    def effective(self) -> list[tuple[str, Any, str]]:
        """Every leaf setting: (dotted key, value, where it came from), in the tree's order."""
        rows: list[tuple[str, Any, str]] = []
        for key, value in _leaves(self.config.model_dump(mode="json")):
            if isinstance(value, str) and "://" in value and "@" in value:
                value = redact_url(value)  # a broker, registry or camera URL's password is not shown
            rows.append((key, value, self._origin_of(key)))
        return rows

    def _origin_of(self, key: str) -> str:
        while key:  # a leaf inside a section a layer gave whole (--source's cameras) came from that layer
            if key in self.origin:
                return self.origin[key]
            key = key.rpartition(".")[0]
        return DEFAULT

    def lines(self, extra: list[tuple[str, Any, str]] | None = None) -> list[str]:
        rows = self.effective() + (extra or [])
        width = max((len(k) for k, _, _ in rows), default=0)
        return [f"{k:<{width}}  {json.dumps(v)}  ({o})" for k, v, o in rows]


def load_layered(model: type[Model], *, file: Path | None, env_names: Mapping[str, str],
                 flags: Mapping[str, tuple[str, Any]], environ: Mapping[str, str] | None = None) -> Layered[Model]:
    """``env_names``: variable -> dotted key; ``flags``: dotted key -> (flag as typed, value)."""
    environ = os.environ if environ is None else environ
    tree: dict[str, Any] = {}
    origin: dict[str, str] = {}
    if file is not None:
        data = read_yaml(file)
        tree = data
        for key, _ in _leaves(data):
            origin[key] = f"file {file}"
    for variable, key in env_names.items():
        value = environ.get(variable)
        if value:  # set and not empty (an empty variable is how compose passes "unset")
            _set(tree, key, value)
            origin[key] = f"env {variable}"
    for key, (flag, value) in flags.items():
        _set(tree, key, value)
        origin[key] = f"flag {flag}"
    try:
        config = model.model_validate(tree)
    except ValidationError as exc:
        raise ConfigError(_one_line(exc, origin, file)) from None
    return Layered(config, file, origin)


def read_yaml(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else exc
        raise ConfigError(f"config file {path}: {reason}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError(f"config file {path}:{where}: {problem}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path}: expected a mapping of settings, got {type(data).__name__}")
    return data


def _one_line(exc: ValidationError, origin: Mapping[str, str], file: Path | None) -> str:
    first = exc.errors()[0]
    key = ".".join(str(part) for part in first["loc"])
    message = "unknown key" if first["type"] == "extra_forbidden" else first["msg"].removeprefix("Value error, ")
    where = f" (in file {file})" if file is not None and first["type"] == "extra_forbidden" else ""
    probe = key
    while probe:
        if probe in origin:
            where = f" (from {origin[probe]})"
            break
        probe = probe.rpartition(".")[0]
    more = len(exc.errors()) - 1
    return (f"{key}: " if key else "") + f"{message}{where}" + (f" (and {more} more)" if more else "")


def _set(tree: dict[str, Any], key: str, value: Any) -> None:
    *parents, leaf = key.split(".")
    node = tree
    for depth, part in enumerate(parents):
        child = node.get(part)
        if child is None:
            child = {}
            node[part] = child
        elif not isinstance(child, dict):
            where = ".".join(parents[: depth + 1])
            raise ConfigError(f"{where}: expected a mapping of settings, got {type(child).__name__}")
        node = child
    node[leaf] = value


def _leaves(data: Any, prefix: str = "") -> list[tuple[str, Any]]:
    if isinstance(data, dict) and data:
        out: list[tuple[str, Any]] = []
        for k, v in data.items():
            out.extend(_leaves(v, f"{prefix}.{k}" if prefix else str(k)))
        return out
    return [(prefix, data)] if prefix else []
