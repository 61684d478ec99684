"""compose/ tested for real, without a Docker engine: the broker with the compose config, files and
certificates (tests/compose_broker.py), the broker's health check command, and docker-compose.yml
against the Compose Specification's JSON schema (tests/vendor/compose-spec.json)."""

from __future__ import annotations

import asyncio
import contextlib
import copy
import json
import os
import re
import shutil
import stat
import subprocess
from collections.abc import Iterator
from pathlib import Path

import jsonschema
import pytest
import yaml

from mqtt_bus import BrokerSettings, MqttBus
from mqtt_bus.bus import publish_once
from tests.compose_broker import COMPOSE, ComposeBroker, as_broker_user, broker_ids
from tests.conftest import ROOT
from tests.mqtt_helpers import Peer, eventually
from tests.processes import stop_all
from tests.prometheus_helpers import fetch

SCHEMA = ROOT / "tests" / "vendor" / "compose-spec.json"


@pytest.fixture
def compose_broker() -> Iterator[ComposeBroker]:
    broker = ComposeBroker().start()
    yield broker
    broker.close()


# --- the broker ---------------------------------------------------------------------------------

def test_broker_runs_as_the_container_user_and_reads_0600_files_it_owns(compose_broker: ComposeBroker) -> None:
    uid, gid = broker_ids()
    for name in ("passwd", "certs/server.key", "health/mosquitto_sub"):
        st = (compose_broker.dir / name).stat()
        assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (uid, gid, 0o600), name
    assert compose_broker.process is not None
    status = Path(f"/proc/{compose_broker.process.pid}/status").read_text()
    real, effective = re.search(r"^Uid:\s+(\d+)\s+(\d+)", status, re.M).groups()  # type: ignore[union-attr]
    assert int(real) == int(effective) == uid


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to make a file the broker's user does not own")
def test_a_password_file_the_container_user_does_not_own_stops_the_broker() -> None:
    """What make-passwords.sh used to leave (0600, owned by whoever ran it): the broker cannot start."""
    broker = ComposeBroker()
    try:
        os.chown(broker.dir / "passwd", 0, 0)
        with pytest.raises(RuntimeError, match="Unable to open pwfile"):
            broker.start(timeout_s=5)
    finally:
        broker.close()


async def test_an_agent_over_tls_is_confined_to_its_own_topics(compose_broker: ComposeBroker) -> None:
    async with Peer(compose_broker.internal("controller"), "ctl-a", ["edgebatch/agents/+/telemetry",
                                                                      "edgebatch/models/+"]) as ctl, \
            Peer(compose_broker.tls("cam1"), "cam1", ["edgebatch/agents/cam1/desired",
                                                       "edgebatch/agents/cam2/desired"]) as cam1:
        await ctl.bus.wait_connected(10)
        await cam1.bus.wait_connected(10)
        assert await cam1.bus.publish("edgebatch/agents/cam1/telemetry", b"own", qos=1)
        assert await cam1.bus.publish("edgebatch/agents/cam2/telemetry", b"forged", qos=1)
        assert await cam1.bus.publish("edgebatch/models/nanodet", b"fake model", qos=1)
        assert await ctl.bus.publish("edgebatch/agents/cam2/desired", b"order for cam2", qos=1)
        assert await ctl.bus.publish("edgebatch/agents/cam1/desired", b"order for cam1", qos=1)
        await eventually(lambda: b"own" in ctl.payloads() and cam1.heard, 10, "delivery over TLS")
        # A last message on each path, so anything the ACL let through would have arrived before it.
        assert await cam1.bus.publish("edgebatch/agents/cam1/telemetry", b"last", qos=1)
        await eventually(lambda: b"last" in ctl.payloads(), 10, "the last telemetry")
    assert ctl.payloads() == {b"own", b"last"}, "an agent published as another agent or announced a model"
    assert [m.payload for m in cam1.heard] == [b"order for cam1"], "an agent read another agent's orders"


async def connect_once(settings: BrokerSettings, client_id: str) -> None:
    """Connect with ``client_id``, wait for the CONNACK, disconnect."""
    bus = MqttBus(settings, client_id, backoff_initial_s=0.1, backoff_max_s=0.2)
    task = asyncio.create_task(bus.run(lambda m: asyncio.sleep(0)))
    try:
        await bus.wait_connected(10)
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    assert bus.counters.connects == 1


async def test_an_agent_cannot_take_over_another_clients_session(compose_broker: ComposeBroker) -> None:
    controller_id = "controller-ctl-a-5f3a"
    async with Peer(compose_broker.internal("controller"), controller_id, ["edgebatch/agents/+/telemetry"]) as ctl, \
            Peer(compose_broker.tls("cam1"), "cam1", ["edgebatch/agents/cam1/desired"]) as cam1:
        await ctl.bus.wait_connected(10)
        await cam1.bus.wait_connected(10)
        for victim_id in (controller_id, "cam1"):
            for _ in range(10):
                await connect_once(compose_broker.tls("cam2"), victim_id)  # a valid login, someone else's id
        # Both still talk: a QoS 1 publish waits for the broker's answer, so a dropped session shows up here
        # (and in the counters: a dropped client reconnects and counts a disconnect).
        sent = [await ctl.bus.publish("edgebatch/agents/cam1/desired", b"still here", qos=1),
                await cam1.bus.publish("edgebatch/agents/cam1/telemetry", b"me too", qos=1)]
        assert (ctl.bus.counters.disconnects, cam1.bus.counters.disconnects) == (0, 0), "a session was taken over"
        assert sent == [True, True]
        await eventually(lambda: cam1.heard and ctl.heard, 10, "a round trip after the attempts")
        assert (ctl.bus.counters.connects, cam1.bus.counters.connects) == (1, 1)

        # The counter does see a takeover: on the internal listener the client id is free (replicas share
        # the "controller" login), and a second login with the controller's id drops the first.
        await connect_once(compose_broker.internal("controller"), controller_id)
        await eventually(lambda: ctl.bus.counters.disconnects == 1, 10, "the internal takeover to be seen")


async def test_plaintext_on_the_tls_port_and_an_unknown_ca_are_refused(compose_broker: ComposeBroker,
                                                                       tmp_path: Path) -> None:
    other_ca = tmp_path / "other-ca.crt"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(tmp_path / "k"),
                    "-out", str(other_ca), "-days", "1", "-subj", "/CN=someone else"], check=True, capture_output=True)
    tls = compose_broker.tls("cam1")
    plaintext = BrokerSettings(tls.host, tls.port, username="cam1", password=tls.password)
    refused = {
        "plaintext on the TLS port": plaintext,
        "a CA that did not sign the broker's certificate": compose_broker.tls("cam1", ca_file=str(other_ca)),
        "a wrong password over TLS": compose_broker.tls("cam1", password="wrong"),
        "no login over TLS": compose_broker.tls(None),
        "a wrong password on the internal listener": compose_broker.internal("controller", "wrong"),
    }
    for what, settings in refused.items():
        with pytest.raises(ConnectionError):
            await publish_once(settings, "cam1", "edgebatch/agents/cam1/status", b"x", timeout_s=5)
            pytest.fail(f"{what} was accepted")
    await publish_once(tls, "cam1", "edgebatch/agents/cam1/status", b"x", timeout_s=5)  # the same, done right


def compose_file() -> dict:
    return yaml.safe_load((COMPOSE / "docker-compose.yml").read_text())


def test_the_broker_health_check_of_compose_works_and_needs_its_login(compose_broker: ComposeBroker) -> None:
    """The mosquitto service's healthcheck command as compose runs it in the container, with its paths and port
    rewritten (mosquitto_sub reads its login from $XDG_CONFIG_HOME/mosquitto_sub; no password in argv)."""
    if not shutil.which("mosquitto_sub"):
        pytest.fail("mosquitto_sub is not installed: run scripts/setup.sh (it installs mosquitto-clients)")
    test = compose_file()["services"]["mosquitto"]["healthcheck"]["test"]
    assert test[0] == "CMD"
    argv = [str(compose_broker.internal_port) if a == "1883" else
            a.replace("$$", "$").replace("/mosquitto/health", str(compose_broker.dir / "health")) for a in test[1:]]
    assert not any(a == "-P" or "PASSWORD" in a for a in argv), "a password on the health check's command line"
    ok = subprocess.run(as_broker_user(argv), capture_output=True, timeout=30)
    assert ok.returncode == 0, ok.stderr
    assert re.fullmatch(rb"\d+ seconds\n", ok.stdout), ok.stdout
    no_login = [a for a in argv if not a.startswith("XDG_CONFIG_HOME=")]
    refused = subprocess.run(as_broker_user([*no_login, "-i", "health-probe"]), capture_output=True, timeout=30)
    assert refused.returncode != 0


# --- docker-compose.yml ---------------------------------------------------------------------------

def schema_errors(document: dict) -> list[str]:
    validator = jsonschema.Draft7Validator(json.loads(SCHEMA.read_text()))
    return [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(document)]


def test_compose_file_follows_the_compose_specification() -> None:
    document = compose_file()
    assert schema_errors(document) == []
    typo = copy.deepcopy(document)
    typo["services"]["mosquitto"]["healthchek"] = typo["services"]["mosquitto"].pop("healthcheck")
    assert any("healthchek" in e for e in schema_errors(typo)), "the schema let a misspelt key through"
    nested = copy.deepcopy(document)
    nested["services"]["controller"]["healthcheck"]["intervall"] = "10s"
    assert any("intervall" in e for e in schema_errors(nested))


def test_images_are_pinned_and_every_service_has_a_health_check() -> None:
    services = compose_file()["services"]
    assert set(services) == {"mosquitto", "mongo", "controller", "prometheus", "grafana"}
    for name, service in services.items():
        assert service.get("healthcheck", {}).get("test"), f"{name} has no health check"
        if "image" in service:
            assert re.fullmatch(r"[\w./-]+:v?\d+\.\d+\.\d+", service["image"]), f"{name}: {service['image']} not exact"
    assert re.match(r"mongosh --quiet --eval", " ".join(services["mongo"]["healthcheck"]["test"][1:]))
    assert "/healthz" in " ".join(services["controller"]["healthcheck"]["test"])
    assert "/-/ready" in " ".join(services["prometheus"]["healthcheck"]["test"])
    assert "/api/health" in " ".join(services["grafana"]["healthcheck"]["test"])
    dockerfile = (ROOT / services["controller"]["build"]["dockerfile"]).read_text()
    assert re.search(r"^FROM python:\d+\.\d+\.\d+-slim-\w+$", dockerfile, re.M), "controller base image not pinned"


def test_only_the_tls_port_of_the_broker_and_no_open_fleet_page_are_published() -> None:
    services = compose_file()["services"]
    assert services["mosquitto"]["ports"] == ["8883:8883"]
    assert services["mongo"]["ports"] == ["27017:27017"], "agents on the devices read the registry"
    (fleet,) = services["controller"]["ports"]
    assert fleet.startswith("${HTTP_BIND:-127.0.0.1}:"), "the fleet page is published beyond this host by default"
    command = services["controller"]["command"]
    assert command[command.index("--http-token-file") + 1] == "/run/secrets/http_token"
    (grafana,) = services["grafana"]["ports"]
    assert grafana.startswith("${HTTP_BIND:-127.0.0.1}:"), "Grafana is published beyond this host by default"
    assert services["prometheus"]["ports"] == ["127.0.0.1:9090:9090"], "Prometheus has no login"


def test_no_secret_on_a_command_line() -> None:
    services = compose_file()["services"]
    environment = services["grafana"]["environment"]
    assert environment["GF_SECURITY_ADMIN_PASSWORD__FILE"] == "/run/secrets/grafana_admin_password"
    assert not any(re.search(r"PASSWORD|TOKEN|SECRET", k) and not k.endswith("__FILE") for k in environment)
    prometheus = yaml.safe_load((COMPOSE / "prometheus" / "prometheus.yml").read_text())
    for job in prometheus["scrape_configs"]:
        sd_auth = [sd.get("authorization", {}) for sd in job.get("http_sd_configs", [])]
        for auth in [job.get("authorization", {}), *sd_auth]:
            assert "credentials" not in auth, f"{job['job_name']}: a token in prometheus.yml"
    for name, service in services.items():
        for part in [*service.get("command", []), *service.get("healthcheck", {}).get("test", [])]:
            assert not re.search(r"\$\{?\w*(PASSWORD|TOKEN|SECRET)", part), f"{name}: {part!r} puts a secret in argv"
            assert "@mosquitto" not in part or ":" not in part.split("@")[0].split("//")[-1], \
                f"{name}: a password in the broker URL"


def test_every_file_compose_mounts_is_in_the_repository_or_made_by_the_scripts(tmp_path: Path) -> None:
    """A copy of compose/ after make-certs.sh and make-passwords.sh has every file compose names."""
    work = tmp_path / "compose"
    shutil.copytree(COMPOSE, work, ignore=shutil.ignore_patterns(".env", "agents.txt", "secrets", "ca", "passwd",
                                                                  "certs"))
    (work / ".env").write_text("\n".join(f"{line.split('=')[0]}=set-{i}" for i, line in enumerate(
        (work / ".env.example").read_text().splitlines()) if "=" in line and not line.startswith("#")) + "\n")
    shutil.copy(work / "agents.example.txt", work / "agents.txt")
    (work / "agents.txt").write_text((work / "agents.txt").read_text().replace("change-me", "pw"))
    ids = {f"{who}_{kind}ID": str(os.getuid() if kind == "U" else os.getgid())
           for who in ("BROKER", "CONTROLLER", "PROMETHEUS", "GRAFANA") for kind in ("U", "G")}
    env = {**os.environ, **ids}
    subprocess.run(["bash", str(work / "make-certs.sh"), "broker.example"], env=env, check=True, capture_output=True)
    subprocess.run(["bash", str(work / "make-passwords.sh")], env=env, check=True, capture_output=True)

    document = yaml.safe_load((work / "docker-compose.yml").read_text())
    named: list[str] = [s["file"] for s in document.get("secrets", {}).values()]
    for service in document["services"].values():
        named += [v.split(":")[0] for v in service.get("volumes", []) if v.startswith(".")]
        for secret in service.get("secrets", []):
            assert secret in document["secrets"], f"service secret {secret} is not declared"
    assert len(named) >= 8
    for path in named:
        assert (work / path).exists(), f"compose names {path}, which nothing makes"
    dockerfile = document["services"]["controller"]["build"]
    assert (ROOT / dockerfile["dockerfile"]).exists() and (work / dockerfile["context"]).resolve() == tmp_path


def test_scripts_refuse_the_example_passwords(tmp_path: Path) -> None:
    env_file = tmp_path / "env"
    shutil.copy(COMPOSE / ".env.example", env_file)
    run = subprocess.run(["bash", str(COMPOSE / "make-passwords.sh")], capture_output=True, text=True,
                         env={**os.environ, "ENV_FILE": str(env_file), "MOSQUITTO_DIR": str(tmp_path / "m"),
                              "SECRETS_DIR": str(tmp_path / "s")})
    assert run.returncode == 2 and "CONTROLLER_MQTT_PASSWORD" in run.stderr
    assert not (tmp_path / "m" / "passwd").exists()


def test_docker_build_context_leaves_out_secrets_and_bulk() -> None:
    ignored = set((ROOT / ".dockerignore").read_text().split())
    assert {".git", ".venv", "tests", "bench", "samples/video", "compose/secrets", "compose/ca",
            "compose/mosquitto/passwd", "compose/mosquitto/certs", "compose/.env"} <= ignored


# --- the real CLIs with their secrets in files ----------------------------------------------------

def http_get(port: int, path: str, token: str | None = None) -> tuple[int, str]:
    return fetch(f"http://127.0.0.1:{port}{path}", token)


async def test_controller_and_agent_run_with_secrets_in_files_only(compose_broker: ComposeBroker,
                                                                    tmp_path: Path) -> None:
    """As compose and deploy/ run them: the controller on the internal listener with the password and
    HTTP token files make-passwords.sh wrote, the agent over TLS with everything from EDGEBATCH_*
    variables. No password is on either command line, and they find each other."""
    import sys

    from mqtt_bus.local_broker import free_port
    from tests.compose_broker import AGENTS
    from tests.conftest import VIDEO

    secrets = compose_broker.dir / "secrets"
    token = (secrets / "http_token").read_text().splitlines()[0]
    http_port = free_port()
    controller_argv = [sys.executable, "-m", "cloud_controller.cli",
                       "--broker", f"mqtt://controller@127.0.0.1:{compose_broker.internal_port}",
                       "--broker-password-file", str(secrets / "controller_mqtt_password"),
                       "--http", f"127.0.0.1:{http_port}", "--http-token-file", str(secrets / "http_token"),
                       "--heartbeat-s", "0.5"]
    cam1_password = tmp_path / "cam1_password"
    cam1_password.write_text(AGENTS["cam1"] + "\n")
    agent_env = {**os.environ, "EDGEBATCH_BROKER_URL": f"mqtts://cam1@localhost:{compose_broker.tls_port}",
                 "EDGEBATCH_BROKER_PASSWORD_FILE": str(cam1_password),
                 "EDGEBATCH_BROKER_CA_FILE": compose_broker.ca_file}
    metrics_port = free_port()
    agent_argv = [sys.executable, "-m", "edge_agent.cli", "run", "--source", str(VIDEO), "--loop", "--fps", "5",
                  "--agent-id", "cam1", "--no-admission", "--telemetry-interval", "0.5",
                  "--metrics", f"127.0.0.1:{metrics_port}"]
    logs = {name: (tmp_path / f"{name}.log").open("wb") for name in ("controller", "agent")}
    processes = [subprocess.Popen(controller_argv, stdout=logs["controller"], stderr=subprocess.STDOUT),
                 subprocess.Popen(agent_argv, env=agent_env, stdout=logs["agent"], stderr=subprocess.STDOUT)]
    try:
        async with Peer(compose_broker.internal("controller"), "observer",
                        ["edgebatch/agents/cam1/telemetry", "edgebatch/controllers/+/alive"]) as observer:
            await eventually(lambda: any(t.endswith("/telemetry") for t in observer.topics()) and any(
                t.endswith("/alive") for t in observer.topics()) or any(p.poll() is not None for p in processes),
                60, "the agent's telemetry over TLS and the controller's heartbeat")
            assert all(p.poll() is None for p in processes), \
                [(tmp_path / f"{n}.log").read_text()[-2000:] for n in logs]

            def fleet_lists_cam1() -> bool:
                status, body = http_get(http_port, "/api/fleet", token)
                return status == 200 and any(a["agent_id"] == "cam1" and a["telemetry"]
                                             for a in json.loads(body)["agents"])

            await eventually(fleet_lists_cam1, 30, "cam1 in the controller's fleet")
            # Prometheus finds the agent through the controller, and scrapes it
            status, targets = http_get(http_port, "/api/prometheus-targets", token)
            assert (status, json.loads(targets)) == (200, [{"targets": [f"127.0.0.1:{metrics_port}"],
                                                            "labels": {"agent": "cam1"}}])
            status, health = http_get(metrics_port, "/healthz")
            assert status == 200 and json.loads(health)["broker_connected"] is True, health
            assert 'edgebatch_frames_in_total{stream="s0"}' in http_get(metrics_port, "/metrics")[1]
        assert http_get(http_port, "/api/fleet")[0] == 401, "the fleet needs the token"
        assert http_get(http_port, "/metrics", "wrong")[0] == 401
        assert http_get(http_port, "/healthz")[0] == 200, "health needs no token and the broker is there"
        for p in processes:
            argv = Path(f"/proc/{p.pid}/cmdline").read_bytes().decode(errors="replace")
            for secret in (token, AGENTS["cam1"], (secrets / "controller_mqtt_password").read_text().strip()):
                assert secret not in argv, "a secret on a command line"
    finally:
        stop_all(processes, logs.values())
