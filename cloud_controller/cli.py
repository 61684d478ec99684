"""``cloud-controller``: follow the fleet's telemetry and publish batch-size decisions."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import ipaddress
import logging
import os
import signal
import socket
import sys

from cloud_controller.controller import OWNERSHIP_MODES, Controller
from cloud_controller.policies import DEFAULT_POLICY, POLICIES, make_policy
from cloud_controller.replicas import ReplicaIdClash
from mqtt_bus.args import (
    OneLineErrorParser,
    add_broker_options,
    bounded_float,
    broker_settings,
    finite_float,
    readable_file,
    segment,
    topic_prefix,
)
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


def default_id() -> str:
    name = "".join(c if c.isalnum() or c in "_.:-" else "-" for c in socket.gethostname())[:100]
    return f"controller-{name or 'host'}"


def http_address(text: str) -> str:
    """HOST:PORT (port 0: any free one) or 'off'."""
    if text == "off":
        return text
    host, _, port = text.rpartition(":")
    if not port.isdigit() or int(port) > 65535:
        raise argparse.ArgumentTypeError(f"{text!r} must be HOST:PORT (port 0-65535) or 'off'")
    try:
        host.encode("idna")
    except UnicodeError:
        raise argparse.ArgumentTypeError(f"{text!r}: {host!r} is not a valid host name") from None
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
    p = OneLineErrorParser(prog="cloud-controller", description=__doc__)
    add_broker_options(p, "mqtt://127.0.0.1:1883", "where the agents publish")
    p.add_argument("--policy", default=DEFAULT_POLICY, metavar="KEY",
                   help="batch-size policy: " + "; ".join(f"{k}: {s.summary}" for k, s in POLICIES.items())
                   + f" (default {DEFAULT_POLICY})")
    p.add_argument("--ladder", default=None, help="batch sizes the policy may choose, e.g. 1,2,4,8,16")
    p.add_argument("--memory-threshold", type=finite_float, default=None,
                   help="no growth above this memory ratio (0.8)")
    p.add_argument("--slo-ms", type=finite_float, default=None,
                   help="end-to-end deadline (ms) for --policy deadline (1000)")
    p.add_argument("--prefix", type=topic_prefix, default="edgebatch", help="MQTT topic prefix")
    p.add_argument("--id", type=segment("controller id"), default=default_id(),
                   help="replica id, unique among the replicas (a second live one with the same id exits 2)")
    p.add_argument("--ownership", choices=OWNERSHIP_MODES, default="hrw",
                   help="how replicas split the fleet by agent: hrw = rendezvous hashing over the live replicas "
                   "(any broker); shared-hash = MQTT v5 shared subscription, only on a broker that shares by "
                   "topic hash (EMQX hash_topic), never mosquitto; single = this one owns every agent")
    p.add_argument("--share-group", type=segment("share group"), default="edgebatch-controllers",
                   help="shared-subscription group (shared-hash)")
    p.add_argument("--heartbeat-s", type=bounded_float(0.05, 60, low_inclusive=True), default=1.0,
                   help="seconds between replica heartbeats; a dead replica's agents move after ~4 of them")
    p.add_argument("--profile-interval-s", type=bounded_float(0, 3600, low_inclusive=True), default=2.0,
                   help="at most this often per agent, publish what the policy learned (retained)")
    p.add_argument("--fleet-interval", type=bounded_float(0.5, 86_400, low_inclusive=True), default=10.0,
                   help="seconds between fleet summaries (>= 0.5)")
    p.add_argument("--pending-timeout", type=bounded_float(0, 86_400), default=120.0,
                   help="seconds to wait for an agent's outcome of an order before deciding again (120)")
    p.add_argument("--refusal-hold", type=bounded_float(0, 86_400 * 7, low_inclusive=True), default=600.0,
                   help="seconds a batch size an agent refused is not ordered again (600)")
    p.add_argument("--http", type=http_address, default="127.0.0.1:8080",
                   help="HOST:PORT for /metrics (Prometheus), /api/fleet and the live fleet page (/); 'off' to disable")
    p.add_argument("--http-token-file", type=readable_file,
                   default=os.environ.get("EDGEBATCH_HTTP_TOKEN_FILE") or None,
                   help="file whose first line is the token that the page, /api/fleet and /metrics then require "
                   "(Bearer, or HTTP Basic with it as the password); /healthz stays open. With a token the page "
                   "is writable: an operator may pin an agent's batch size; without one it is read-only "
                   "(env EDGEBATCH_HTTP_TOKEN_FILE)")
    p.add_argument("-v", "--verbose", action="store_true")
    return p


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

        host, _, port = args.http.rpartition(":")
        host = host or "127.0.0.1"
        server = FleetServer(controller, host, int(port), token=args.http_token)
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
        args.broker_settings = broker_settings(args)
        args.http_token = read_secret(args.http_token_file, "--http-token-file") if args.http_token_file else None
        try:
            ladder = tuple(int(t) for t in args.ladder.split(",")) if args.ladder else None
        except ValueError:
            raise ValueError(f"--ladder {args.ladder!r} must be comma-separated integers") from None
        args.policy_object = make_policy(args.policy, ladder=ladder, memory_threshold=args.memory_threshold,
                                         slo_ms=args.slo_ms)
    except ValueError as exc:
        print(f"cloud-controller: error: {exc}", file=sys.stderr)
        return 2
    tune_gc()
    return asyncio.run(serve(args))


if __name__ == "__main__":
    sys.exit(main())
