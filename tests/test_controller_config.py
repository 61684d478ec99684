"""The controller's settings tree: file < environment < flags, each policy's own settings under its key."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from cloud_controller.cli import build_parser, load_settings
from cloud_controller.policies import DeadlinePolicy, Kum2022Policy
from mqtt_bus.layered_config import ConfigError


def load(tmp_path: Path, yaml_text: str | None, *flags: str):  # type: ignore[no-untyped-def]
    argv: list[str] = []
    if yaml_text is not None:
        (tmp_path / "controller.yml").write_text(yaml_text)
        argv = ["--config", str(tmp_path / "controller.yml")]
    args = build_parser().parse_args([*argv, *flags])
    return load_settings(args), args


def test_layers_and_the_policys_own_settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    yaml_text = """
controller: {prefix: site1/eb, heartbeat_s: 0.5}
policy:
  name: kum2022
  deadline: {slo_ms: 400, ladder: [1, 2, 4, 8]}
  kum2022: {memory_threshold: 0.7}
http: {address: "127.0.0.1:0"}
"""
    monkeypatch.setenv("EDGEBATCH_POLICY", "deadline")  # the environment beats the file
    layered, args = load(tmp_path, yaml_text, "--slo-ms", "300", "--heartbeat-s", "2")
    cfg = layered.config
    assert (cfg.policy.name, cfg.controller.prefix, cfg.controller.heartbeat_s) == ("deadline", "site1/eb", 2.0)
    policy = cfg.policy.build()
    assert isinstance(policy, DeadlinePolicy)
    assert policy.config.slo_ms == 300.0 and policy.config.ladder == (1, 2, 4, 8), "flag over file, file kept"
    origin = {k: o for k, _, o in layered.effective()}
    assert origin["policy.name"] == "env EDGEBATCH_POLICY"
    assert origin["policy.deadline.slo_ms"] == "flag --slo-ms"
    assert origin["policy.deadline.ladder"].startswith("file ")
    assert (args.prefix, args.heartbeat_s, args.http) == ("site1/eb", 2.0, "127.0.0.1:0")
    monkeypatch.delenv("EDGEBATCH_POLICY")
    kum = load(tmp_path, yaml_text)[0].config.policy.build()
    assert isinstance(kum, Kum2022Policy) and kum.config.memory_threshold == 0.7, "switching keeps each one's tuning"


@pytest.mark.parametrize(("yaml_text", "expected"), [
    ("policy: {deadline: {ladder: [4, 2]}}\n", "must be increasing"),
    ("policy: {deadline: {slo: 5}}\n", "policy.deadline.slo: unknown key (policy deadline takes:"),
    ("policy: {deadlin: {slo_ms: 5}}\n", "policy.deadlin: unknown key (policies: deadline, kum2022)"),
    ("policy: {name: fastest}\n", "unknown policy 'fastest'; known: deadline, kum2022"),
    ("controller: {heartbeat_s: 0}\n", "controller.heartbeat_s: Input should be greater than or equal to 0.05"),
    ("controller: {ownershp: hrw}\n", "controller.ownershp: unknown key"),
    ("controller: {prefix: 'a/+'}\n", "controller.prefix"),
])
def test_a_bad_setting_names_its_key(tmp_path: Path, yaml_text: str, expected: str) -> None:
    with pytest.raises((ConfigError, ValueError)) as caught:
        load(tmp_path, yaml_text)[0].config.policy.build()
    assert expected in str(caught.value) and "\n" not in str(caught.value), str(caught.value)


def test_print_config_and_a_bad_file_through_the_cli(tmp_path: Path) -> None:
    path = tmp_path / "controller.yml"
    path.write_text("policy: {deadline: {headroom: 0.7}}\n")
    result = subprocess.run([sys.executable, "-m", "cloud_controller.cli", "--config", str(path), "--print-config"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert any(line.startswith("policy.deadline.headroom") and f"(file {path})" in line for line in lines)
    assert any(line.startswith("policy.deadline.slo_ms") and "(the policy's default)" in line for line in lines)
    path.write_text("http: {address: nowhere}\n")
    result = subprocess.run([sys.executable, "-m", "cloud_controller.cli", "--config", str(path)],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines() == ["cloud-controller: error: http.address: 'nowhere' must be "
                                                  "HOST:PORT (port 0-65535) or 'off'"]
