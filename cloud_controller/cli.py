"""``cloud-controller``: follow the fleet's telemetry and publish batch-size decisions."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
import socket
import sys

from cloud_controller.controller import Controller
from cloud_controller.policies import DEFAULT_POLICY, POLICIES, make_policy
from mqtt_bus import BrokerSettings

log = logging.getLogger("cloud_controller")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="cloud-controller", description=__doc__)
    p.add_argument("--broker", default="mqtt://127.0.0.1:1883", help="mqtt://[user:pass@]host[:port] or mqtts://")
    p.add_argument("--ca-file", default=None, help="CA bundle for an mqtts:// broker")
    p.add_argument("--policy", default=DEFAULT_POLICY, metavar="KEY",
                   help="batch-size policy: " + "; ".join(f"{k}: {s.summary}" for k, s in POLICIES.items())
                   + f" (default {DEFAULT_POLICY})")
    p.add_argument("--ladder", default=None, help="batch sizes the policy may choose, e.g. 1,2,4,8,16")
    p.add_argument("--memory-threshold", type=float, default=None, help="no growth above this memory ratio (0.8)")
    p.add_argument("--slo-ms", type=float, default=None, help="end-to-end deadline (ms) for --policy deadline (1000)")
    p.add_argument("--prefix", default="edgebatch", help="MQTT topic prefix")
    p.add_argument("--id", default=f"controller-{socket.gethostname()}", help="controller client id")
    p.add_argument("--share-group", default="edgebatch-controllers", help="replicas in one group split the fleet")
    p.add_argument("--fleet-interval", type=float, default=10.0, help="seconds between fleet summaries")
    p.add_argument("--pending-timeout", type=float, default=120.0,
                   help="seconds to wait for an agent's outcome of an order before deciding again (120)")
    p.add_argument("--refusal-hold", type=float, default=600.0,
                   help="seconds a batch size an agent refused is not ordered again (600)")
    p.add_argument("--http", default="127.0.0.1:8080",
                   help="HOST:PORT for /metrics (Prometheus), /api/fleet and the fleet page; 'off' to disable")
    p.add_argument("-v", "--verbose", action="store_true")
    return p


async def serve(args: argparse.Namespace) -> int:
    controller = Controller(BrokerSettings.from_url(args.broker, args.ca_file), args.policy_object,
                            prefix=args.prefix, controller_id=args.id, share_group=args.share_group,
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
        server = FleetServer(controller, host or "127.0.0.1", int(port))
        await server.start()
        print(f"fleet view on http://{server.host}:{server.port}/ (metrics on /metrics)", flush=True)
    async with asyncio.TaskGroup() as tg:
        runner = tg.create_task(controller.run(), name="controller.bus")
        shower = tg.create_task(fleet(), name="controller.fleet")
        await stop.wait()
        runner.cancel()
        shower.cancel()
    if server is not None:
        await server.close()
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        BrokerSettings.from_url(args.broker)
        try:
            ladder = tuple(int(t) for t in args.ladder.split(",")) if args.ladder else None
        except ValueError:
            raise ValueError(f"--ladder {args.ladder!r} must be comma-separated integers") from None
        args.policy_object = make_policy(args.policy, ladder=ladder, memory_threshold=args.memory_threshold,
                                         slo_ms=args.slo_ms)
        if args.pending_timeout <= 0 or args.refusal_hold < 0:
            raise ValueError("--pending-timeout must be > 0 and --refusal-hold >= 0 seconds")
        if args.http != "off" and not args.http.rpartition(":")[2].isdigit():
            raise ValueError(f"--http {args.http!r} must be HOST:PORT or 'off'")
    except ValueError as exc:
        print(f"cloud-controller: error: {exc}", file=sys.stderr)
        return 2
    return asyncio.run(serve(args))


if __name__ == "__main__":
    sys.exit(main())
