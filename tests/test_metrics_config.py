"""compose/prometheus and compose/grafana without a Docker engine: the Prometheus config through promtool
(from Debian's ``prometheus`` package; scripts/setup.sh puts it in .venv/bin), the dashboard's PromQL through promtool's
parser, and every metric the dashboard names against what a real agent and a real controller serve."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from cloud_controller.controller import Controller
from cloud_controller.policies import Kum2022Policy
from cloud_controller.web import FleetServer
from edge_agent.adapters import ModelAdapter
from edge_agent.agent import Agent
from edge_agent.engines import InferenceEngine
from edge_agent.metrics import AgentMetrics
from edge_agent.pipeline import Pipeline, PipelineConfig
from edge_agent.probes.host import HostProbe
from edge_agent.settings import AgentSettings
from edge_agent.sources import open_sources
from edge_agent.web import MetricsServer
from mqtt_bus import BrokerSettings
from tests.compose_broker import COMPOSE
from tests.prometheus_helpers import Samples, scrape

PROMETHEUS = COMPOSE / "prometheus" / "prometheus.yml"
GRAFANA = COMPOSE / "grafana"
DASHBOARD = GRAFANA / "dashboards" / "edgebatch.json"
REQUIRED_PANELS = ("Batch size", "Frames in / out per second", "End-to-end delay p95", "GPU utilisation",
                   "GPU memory", "Swaps by outcome", "Deadline misses and drops per second")
METRIC = re.compile(r"\bedgebatch_\w+")
SELECTOR = re.compile(r"(edgebatch_\w+)\{([^}]*)\}")


def promtool() -> str:
    path = shutil.which("promtool") or shutil.which("promtool", path=str(Path(sys.executable).parent))
    if path is None:
        pytest.fail("promtool is not installed: run scripts/setup.sh (it puts Debian's promtool in .venv/bin)")
    return path


def with_secrets_in(config: Path, secrets: Path) -> Path:
    """The config with /run/secrets/ pointing at ``secrets`` (promtool checks that credential files exist)."""
    secrets.mkdir(exist_ok=True)
    text = config.read_text()
    for name in set(re.findall(r"/run/secrets/(\w+)", text)):
        (secrets / name).write_text("token\n")
    out = secrets.parent / config.name
    out.write_text(text.replace("/run/secrets/", f"{secrets}/"))
    return out


def test_promtool_passes_the_prometheus_config_and_would_catch_a_mistake(tmp_path: Path) -> None:
    tool = promtool()
    config = with_secrets_in(PROMETHEUS, tmp_path / "secrets")
    ok = subprocess.run([tool, "check", "config", str(config)], capture_output=True, text=True, timeout=60)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    document = yaml.safe_load(config.read_text())
    document["scrape_configs"][1]["http_sd_configs"][0]["refresh_intervall"] = "30s"
    broken = tmp_path / "broken.yml"
    broken.write_text(yaml.safe_dump(document))
    bad = subprocess.run([tool, "check", "config", str(broken)], capture_output=True, text=True, timeout=60)
    assert bad.returncode != 0 and "refresh_intervall" in bad.stdout + bad.stderr


def test_prometheus_finds_the_agents_through_the_controller() -> None:
    jobs = {job["job_name"]: job for job in yaml.safe_load(PROMETHEUS.read_text())["scrape_configs"]}
    (sd,) = jobs["agents"]["http_sd_configs"]
    assert sd["url"] == "http://controller:8080/api/prometheus-targets"
    assert sd["authorization"]["credentials_file"] == jobs["controller"]["authorization"]["credentials_file"]
    compose = yaml.safe_load((COMPOSE / "docker-compose.yml").read_text())
    secret = Path(sd["authorization"]["credentials_file"]).name
    assert secret in compose["services"]["prometheus"]["secrets"]
    assert "--http\n0.0.0.0:8080" in "\n".join(compose["services"]["controller"]["command"])


def dashboard() -> dict:
    return json.loads(DASHBOARD.read_text())


def expressions(board: dict) -> list[str]:
    exprs = [t["expr"] for p in board["panels"] for t in p.get("targets", [])]
    exprs += [v["query"]["query"] for v in board["templating"]["list"] if v["type"] == "query"]
    return exprs


def test_the_dashboard_uses_the_provisioned_datasource_and_has_every_panel() -> None:
    board = dashboard()
    (datasource,) = yaml.safe_load((GRAFANA / "provisioning" / "datasources" / "prometheus.yml").read_text())[
        "datasources"]
    assert datasource["url"] == "http://prometheus:9090"
    (provider,) = yaml.safe_load((GRAFANA / "provisioning" / "dashboards" / "edgebatch.yml").read_text())["providers"]
    compose = yaml.safe_load((COMPOSE / "docker-compose.yml").read_text())
    assert f"./grafana/dashboards:{provider['options']['path']}:ro" in compose["services"]["grafana"]["volumes"]
    titles = [p["title"] for p in board["panels"]]
    assert set(REQUIRED_PANELS) <= set(titles), set(REQUIRED_PANELS) - set(titles)
    assert len(set(p["id"] for p in board["panels"])) == len(board["panels"])
    assert [v["name"] for v in board["templating"]["list"]] == ["agent"]
    for panel in board["panels"]:
        if panel["type"] == "row":
            continue
        assert panel["targets"], panel["title"]
        for source in [panel["datasource"], *(t["datasource"] for t in panel["targets"])]:
            assert source == {"type": "prometheus", "uid": datasource["uid"]}, panel["title"]
        if panel["title"] in REQUIRED_PANELS:
            assert all('agent=~"$agent"' in t["expr"] for t in panel["targets"]), panel["title"]


def test_promtool_parses_every_query_of_the_dashboard(tmp_path: Path) -> None:
    """As recording rules, with Grafana's variables filled in: promtool parses each with Prometheus' parser."""
    tool = promtool()
    rules = [{"record": f"edgebatch:dashboard:{i}", "expr": e.replace("$__rate_interval", "1m").replace("$agent", ".*")}
             for i, e in enumerate(expressions(dashboard())) if not e.startswith("label_values(")]
    path = tmp_path / "rules.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    ok = subprocess.run([tool, "check", "rules", str(path)], capture_output=True, text=True, timeout=60)
    assert ok.returncode == 0, ok.stdout + ok.stderr


async def served_metrics(video: Path, engine: InferenceEngine, decoder: ModelAdapter) -> tuple[set[str], Samples]:
    """Every series name a real agent (with its MQTT side) and a real controller list on /metrics."""
    sources = await open_sources([str(video)], loop=True)
    pipeline = Pipeline(sources, engine, decoder, PipelineConfig(batch_size=2))
    agent = Agent(pipeline, HostProbe(), AgentSettings(broker_url="mqtt://127.0.0.1:9", agent_id="cam1"))
    servers = [MetricsServer(AgentMetrics(pipeline, HostProbe(), agent), port=0),
               FleetServer(Controller(BrokerSettings(port=9), Kum2022Policy()), port=0)]
    names: set[str] = set()
    samples: Samples = {}
    try:
        for server in servers:
            listed, sampled = await scrape(await server.start())
            names |= listed
            samples |= sampled
    finally:
        for server in servers:
            await server.close()
        for s in sources:
            s.close()
    return names, samples


async def test_the_dashboard_names_only_metrics_that_are_served(short_video: Path, engine: InferenceEngine,
                                                                decoder: ModelAdapter) -> None:
    names, samples = await served_metrics(short_video, engine, decoder)
    labels: dict[str, set[str]] = {}
    for name, label_set in samples:
        labels.setdefault(name, set()).update(k for k, _ in label_set)
    for expr in expressions(dashboard()):
        used = set(METRIC.findall(expr))
        assert used, f"no edgebatch metric in {expr!r}"
        assert used <= names, f"{expr!r} names {used - names}, which neither the agent nor the controller serves"
        for name, selector in SELECTOR.findall(expr):
            keys = set(re.findall(r"(\w+)\s*=~?", selector))
            # "agent" is the target label Prometheus gives each agent (http_sd), or the controller's own label
            assert keys <= labels.get(name, set()) | {"agent"}, f"{expr!r}: {name} has no label {keys}"
