"""``cloud-controller``: follow the fleet's telemetry and publish batch-size decisions."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import gc
import ipaddress
import logging
import os
import signal
import socket
import sys
from pathlib import Path

from cloud_controller.config import ENV_NAMES, FLAG_KEYS, POLICY_FLAGS, ControllerConfig
from cloud_controller.controller import OWNERSHIP_MODES, Controller
from cloud_controller.policies import DEFAULT_POLICY, POLICIES
from cloud_controller.replicas import ReplicaIdClash
from mqtt_bus.args import (
    OneLineErrorParser,
    add_broker_options,
    batch_list,
    bounded_float,
    broker_settings,
    finite_float,
    readable_file,
    segment,
    topic_prefix,
)
from mqtt_bus.http import parse_address
from mqtt_bus.layered_config import Layered, load_layered
from mqtt_bus.secrets import read_secret

log = logging.getLogger("cloud_controller")


GC_THRESHOLDS = (10_000, 20, 20)


def tune_gc() -> None:
    """Collect cyclic garbage less often. A controller under a telemetry flood holds thousands of
    messages in its queue, and with CPython's default thresholds (700, 10, 10) the collector keeps
    re-scanning them: measured with bench/controller_throughput.py, a third to a half of the process's
    CPU time went to it. Nearly all of its garbage is freed by reference counting anyway; what the
    start-up made is frozen out of the scans."""
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)


def http_address(text: str) -> str:
    """HOST:PORT (port 0: any free one) or 'off' (``mqtt_bus.http.parse_address`` reads it)."""
    if text == "off":
        return text
    try:
        parse_address(text)
    except ValueError as exc:
        message = str(exc) if "host name" in str(exc) else f"{text!r} must be HOST:PORT (port 0-65535) or 'off'"
        raise argparse.ArgumentTypeError(message) from None
    return text


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        try:
            return ipaddress.ip_address(socket.gethostbyname(host)).is_loopback
        except OSError:
            return False


def build_parser() -> argparse.ArgumentParser:
    """Each flag sets one key of the settings tree (cloud_controller/config.py); one not given is absent
    (SUPPRESS), so the file, the environment or the default decides."""
    S = argparse.SUPPRESS
    p = OneLineErrorParser(prog="cloud-controller", description=__doc__)
    p.add_argument("--config", type=readable_file, default=os.environ.get("EDGEBATCH_CONTROLLER_CONFIG") or None,
                   help="YAML settings file (env EDGEBATCH_CONTROLLER_CONFIG); the environment overrides it, flags "
                   "override both")
    p.add_argument("--print-config", action="store_true",
                   help="print the effective settings and where each came from, and exit")
    add_broker_options(p, "mqtt://127.0.0.1:1883", "where the agents publish", settings_tree=True)
    p.add_argument("--policy", default=S, metavar="KEY",
                   help="batch-size policy: " + "; ".join(f"{k}: {s.summary}" for k, s in POLICIES.items())
                   + f" (default {DEFAULT_POLICY})")
    p.add_argument("--ladder", type=batch_list, default=S, help="batch sizes the policy may choose, e.g. 1,2,4,8,16")
    p.add_argument("--memory-threshold", type=finite_float, default=S,
                   help="no growth above this memory ratio (0.8)")
    p.add_argument("--slo-ms", type=finite_float, default=S,
                   help="end-to-end deadline (ms) for --policy deadline (1000)")
    p.add_argument("--prefix", type=topic_prefix, default=S, help="MQTT topic prefix (default edgebatch)")
    p.add_argument("--id", type=segment("controller id"), default=S,
                   help="replica id, unique among the replicas (a second live one with the same id exits 2; "
                   "default controller-HOSTNAME)")
    p.add_argument("--ownership", choices=OWNERSHIP_MODES, default=S,
                   help="how replicas split the fleet by agent: hrw = rendezvous hashing over the live replicas "
                   "(any broker; default); shared-hash = MQTT v5 shared subscription, only on a broker that shares "
                   "by topic hash (EMQX hash_topic), never mosquitto; single = this one owns every agent")
    p.add_argument("--share-group", type=segment("share group"), default=S,
                   help="shared-subscription group (shared-hash; default edgebatch-controllers)")
    p.add_argument("--heartbeat-s", type=bounded_float(0.05, 60, low_inclusive=True), default=S,
                   help="seconds between replica heartbeats (1); a dead replica's agents move after ~4 of them")
    p.add_argument("--profile-interval-s", type=bounded_float(0, 3600, low_inclusive=True), default=S,
                   help="at most this often per agent, publish what the policy learned (retained; 2)")
    p.add_argument("--fleet-interval", type=bounded_float(0.5, 86_400, low_inclusive=True), default=S,
                   help="seconds between fleet summaries (>= 0.5; 10)")
    p.add_argument("--pending-timeout", type=bounded_float(0, 86_400), default=S,
                   help="seconds to wait for an agent's outcome of an order before deciding again (120)")
    p.add_argument("--refusal-hold", type=bounded_float(0, 86_400 * 7, low_inclusive=True), default=S,
                   help="seconds a batch size an agent refused is not ordered again (600)")
    p.add_argument("--http", type=http_address, default=S,
                   help="HOST:PORT for /metrics (Prometheus), /api/fleet and the live fleet page (/); 'off' to disable "
                   "(default 127.0.0.1:8080)")
    p.add_argument("--http-token-file", type=readable_file, default=S,
                   help="file whose first line is the token that the page, /api/fleet and /metrics then require "
                   "(Bearer, or HTTP Basic with it as the password); /healthz stays open. With a token the page "
                   "is writable: an operator may pin an agent's batch size; without one it is read-only "
                   "(env EDGEBATCH_HTTP_TOKEN_FILE)")
    p.add_argument("-v", "--verbose", action="store_true")
    return p


def load_settings(args: argparse.Namespace) -> Layered[ControllerConfig]:
    """The settings tree from --config, EDGEBATCH_* and the flags given; the flags' names in ``args`` then
    carry the effective values. A policy parameter flag sets the chosen policy's own setting."""
    flags = {key: (flag, getattr(args, dest)) for dest, (key, flag) in FLAG_KEYS.items() if hasattr(args, dest)}
    file = Path(args.config) if args.config else None
    layered = load_layered(ControllerConfig, file=file, env_names=ENV_NAMES, flags=flags)
    given = {param: (flag, getattr(args, dest)) for dest, (param, flag) in POLICY_FLAGS.items() if hasattr(args, dest)}
    if given:
        name = layered.config.policy.name
        flags.update({f"policy.{name}.{param}": value for param, value in given.items()})
        layered = load_layered(ControllerConfig, file=file, env_names=ENV_NAMES, flags=flags)
    cfg = layered.config
    tree = cfg.model_dump()
    for dest, (key, _flag) in FLAG_KEYS.items():
        section, _, name = key.partition(".")
        setattr(args, dest, tree[section][name])
    args.settings = cfg
    return layered


async def serve(args: argparse.Namespace) -> int:
    controller = Controller(args.broker_settings, args.policy_object,
                            prefix=args.prefix, controller_id=args.id, share_group=args.share_group,
                            ownership=args.ownership, heartbeat_s=args.heartbeat_s,
                            profile_interval_s=args.profile_interval_s,
                            pending_timeout_s=args.pending_timeout, refusal_hold_s=args.refusal_hold)
    controller.decision_listeners.append(
        lambda view, desired, decision: print(
            f"{view.agent_id}: gen {desired.generation} -> batch {desired.batch_size}: {desired.reason}", flush=True))
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)

    async def fleet() -> None:
        while True:
            await asyncio.sleep(args.fleet_interval)
            for line in controller.fleet_lines():
                print(line, flush=True)

    server = None
    if args.http != "off":
        from cloud_controller.web import FleetServer

        host, port = parse_address(args.http)
        server = FleetServer(controller, host, port, token=args.http_token)
        try:
            await server.start()
        except OSError as exc:  # port taken, address not on this host, no permission
            print(f"cloud-controller: error: --http {args.http}: {exc.strerror or exc}", file=sys.stderr, flush=True)
            return 2
        print(f"fleet view on http://{server.host}:{server.port}/ (metrics on /metrics)", flush=True)
        if args.http_token is None and not _is_loopback(host):
            log.warning("the fleet page and /metrics on %s are open to anyone who can reach it: give "
                        "--http-token-file", args.http)
    clash: ReplicaIdClash | None = None
    try:
        async with asyncio.TaskGroup() as tg:
            runner = tg.create_task(controller.run(), name="controller.run")
            shower = tg.create_task(fleet(), name="controller.fleet")
            stopper = tg.create_task(stop.wait(), name="controller.stop")
            await asyncio.wait([runner, stopper], return_when=asyncio.FIRST_COMPLETED)
            if stopper.done():
                await controller.goodbye()
            for task in (runner, shower, stopper):
                task.cancel()
    except* ReplicaIdClash as group:
        clash = group.exceptions[0]  # type: ignore[assignment]
    finally:
        if server is not None:
            await server.close()
    if clash is not None:
        print(f"cloud-controller: error: {clash}", file=sys.stderr, flush=True)
        return 2
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        layered = load_settings(args)
        if args.print_config:
            name = args.settings.policy.name
            given = args.settings.policy.settings_of(name)
            rest = [(f"policy.{name}.{f.name}", f.default if f.default is not dataclasses.MISSING else None,
                     "the policy's default")  # the rest of the chosen policy's own settings
                    for f in dataclasses.fields(POLICIES[name].config_type) if f.name not in given]
            print("\n".join(layered.lines(rest)))
            return 0
        try:
            http_address(args.http)  # the same check as the flag's, for a value from the file or environment
        except argparse.ArgumentTypeError as exc:
            raise ValueError(f"http.address: {exc}") from None
        args.broker_settings = broker_settings(args)
        args.http_token = read_secret(args.http_token_file, "--http-token-file") if args.http_token_file else None
        args.policy_object = args.settings.policy.build()
    except ValueError as exc:
        print(f"cloud-controller: error: {exc}", file=sys.stderr)
        return 2
    tune_gc()
    return asyncio.run(serve(args))


if __name__ == "__main__":
    sys.exit(main())
