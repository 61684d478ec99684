"""``model-registry``: push, list, pull, rm (and build TensorRT engines on a GPU device)."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import sys
from collections.abc import Iterator
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, DownloadColumn, Progress, TransferSpeedColumn
from rich.table import Table

from model_registry.artifacts import ArtifactQuery, pick_artifact
from model_registry.errors import RegistryError
from model_registry.registry import Registry, fetch_verified
from model_registry.stores import open_store
from mqtt_bus import publish_once
from mqtt_bus.args import OneLineErrorParser, add_broker_options, batch_list, bounded_int, broker_settings, segment
from schemas import MODEL_TYPES, ArtifactInfo, ArtifactTarget, ModelAnnouncement, Topics, encode

PROGRESS_MIN_BYTES = 1 << 20


def build_parser() -> argparse.ArgumentParser:
    p = OneLineErrorParser(prog="model-registry", description=__doc__)
    p.add_argument("--store", default=os.environ.get("EDGEBATCH_REGISTRY") or "./registry",
                   help="a directory (default ./registry) or mongodb://... (env EDGEBATCH_REGISTRY: keeps a "
                   "MongoDB password off the command line)")
    sub = p.add_subparsers(dest="command", required=True)
    # --store is accepted after the command too (model-registry list --store DIR): on each sub-parser,
    # absent unless given there, so the one before the command (or its default) stands otherwise.
    common = OneLineErrorParser(add_help=False)
    common.add_argument("--store", default=argparse.SUPPRESS, help="as --store before the command")
    push = sub.add_parser("push", help="store a model file", parents=[common])
    push.add_argument("file", type=Path)
    push.add_argument("--name", required=True, type=segment("model name"))
    push.add_argument("--version", required=True, type=segment("model version"))
    push.add_argument("--batch-sizes", type=batch_list, default=None, help="sizes it serves (engines)")
    push.add_argument("--format", default="onnx", choices=["onnx", "tensorrt"])
    push.add_argument("--precision", default="fp32", choices=["fp32", "fp16", "int8"])
    push.add_argument("--export-static", type=batch_list, default=None,
                      help="also store one static-batch ONNX per size, e.g. 1,2,4,8,16")
    push.add_argument("--model-type", choices=MODEL_TYPES, default=None,
                      help="detector family (the edge agent's adapter); default: inferred from an ONNX model where "
                      "its outputs say it unambiguously, else what its version records, else unknown. One the "
                      "model contradicts is refused")
    add_broker_options(push, None, "announce on {prefix}/models/{name} (retained)")
    push.add_argument("--prefix", default="edgebatch")
    ls = sub.add_parser("list", help="list artifacts as a table (or --json)", parents=[common])
    ls.add_argument("--name")
    ls.add_argument("--version")
    ls.add_argument("--json", action="store_true", help="every artifact's record as JSON")
    pull = sub.add_parser("pull", help="download an artifact, verified by sha256", parents=[common])
    pull.add_argument("id", nargs="?", help="artifact id (or use --name/--version/--batch-size)")
    pull.add_argument("--name")
    pull.add_argument("--version")
    pull.add_argument("--batch-size", type=bounded_int(1, 1024), default=1)
    pull.add_argument("--out", required=True, help="file to write, or a folder (DIR/) to write "
                      "NAME-VERSION-bSIZES.onnx|plan into")
    rm = sub.add_parser("rm", help="delete an artifact", parents=[common])
    rm.add_argument("id")
    build = sub.add_parser("build", help="build TensorRT engines on this device and push them", parents=[common])
    build.add_argument("--onnx", type=Path, required=True)
    build.add_argument("--name", required=True, type=segment("model name"))
    build.add_argument("--version", required=True, type=segment("model version"))
    build.add_argument("--batch-sizes", type=batch_list, default=[1, 2, 4, 8, 16])
    build.add_argument("--fp16", action="store_true")
    build.add_argument("--profiles", action="store_true", help="one engine, an optimization profile per size")
    build.add_argument("--workdir", type=Path, default=Path("build/engines"))
    build.add_argument("--model-type", choices=MODEL_TYPES, default=None,
                       help="detector family recorded with the engines; default: inferred from --onnx")
    darknet = sub.add_parser("convert-darknet", help="darknet .cfg + .weights -> ONNX (yolo layers decoded in the "
                             "graph: a [B, N, 5+C] head, served as --model-type yolo-v5)")
    darknet.add_argument("cfg", type=Path)
    darknet.add_argument("weights", type=Path)
    darknet.add_argument("--names", type=Path, default=None, help="class names, one per line: stored as metadata")
    darknet.add_argument("--out", type=Path, required=True, help="ONNX file to write")
    return p


@contextlib.contextmanager
def transfer_bar(label: str, total: int) -> Iterator[callable]:  # type: ignore[valid-type]
    if total < PROGRESS_MIN_BYTES:
        yield lambda _moved: None
        return
    with Progress("[progress.description]{task.description}", BarColumn(), DownloadColumn(),
                  TransferSpeedColumn(), console=Console(stderr=True), transient=True) as bar:
        task = bar.add_task(label, total=total)
        yield lambda moved: bar.update(task, completed=moved)


def artifact_filename(info: ArtifactInfo) -> str:
    """``nanodet-1-b4.onnx``, ``nanodet-1-dyn.onnx``, ``yolo-2-b1-8-fp16.plan``: what ``pull --out DIR/`` writes."""
    sizes = "dyn" if info.dynamic_batch else "b" + "-".join(map(str, info.batch_sizes))
    precision = "" if info.precision == "fp32" else f"-{info.precision}"
    return f"{info.name}-{info.version}-{sizes}{precision}.{'plan' if info.format == 'tensorrt' else 'onnx'}"


async def run(args: argparse.Namespace) -> int:
    console = Console()
    if not console.is_terminal:
        console = Console(width=160)
    store = open_store(args.store)
    try:
        if args.command == "push":
            announcer = None
            if args.broker:
                settings = broker_settings(args)
                topics = Topics(args.prefix)

                async def announcer(message: ModelAnnouncement) -> None:
                    await publish_once(settings, "model-registry", topics.model(message.name), encode(message),
                                       qos=1, retain=True)

            registry = Registry(store, announcer)
            if not args.file.is_file():
                raise RegistryError(f"{args.file}: file not found")
            with transfer_bar(f"push {args.file.name}", args.file.stat().st_size) as progress:
                pushed = await registry.push(args.file, args.name, args.version, args.batch_sizes, args.format,
                                             args.precision, None, args.export_static, progress, args.model_type)
            for a in pushed:
                console.print(f"pushed {a.id}  {a.name} {a.version} {a.format} batch {a.batch_sizes}"
                              f"{' (dynamic)' if a.dynamic_batch else ''}  type {a.model_type or 'unknown'}  "
                              f"sha256 {a.sha256[:12]}  {a.size_bytes} B")
            if args.broker:
                console.print(f"announced on {Topics(args.prefix).model(args.name)}")
        elif args.command == "list":
            found = await store.find(ArtifactQuery(name=args.name, version=args.version))
            if args.json:
                rows = [a.model_dump(mode="json") for a in sorted(found, key=lambda a: (a.name, a.version, a.id))]
                print(json.dumps(rows, indent=2))
                return 0
            table = Table(title=f"artifacts in {store.location}")
            for col in ("id", "name", "version", "type", "format", "batch sizes", "target", "sha256", "size"):
                table.add_column(col)
            for a in sorted(found, key=lambda a: (a.name, a.version, a.format, a.batch_sizes)):
                sizes = ",".join(map(str, a.batch_sizes)) + (" (dyn)" if a.dynamic_batch else "")
                table.add_row(a.id, a.name, a.version, a.model_type or "?", a.format, sizes, a.target.platform,
                              a.sha256[:12], f"{a.size_bytes / 2**20:.1f} MiB")
            console.print(table)
        elif args.command == "pull":
            if args.id:
                info = await store.get(args.id)
            else:
                if not (args.name and args.version):
                    raise RegistryError("pull needs an id, or --name and --version")
                found = await store.find(ArtifactQuery(name=args.name, version=args.version))
                picked = pick_artifact(found, args.batch_size, ArtifactTarget())
                if picked is None:
                    raise RegistryError(f"no artifact of {args.name} {args.version} serves batch {args.batch_size}")
                info = picked
            out = Path(args.out)  # (a Path would drop the trailing "/" that says "a folder")
            if out.is_dir() or args.out.endswith(("/", os.sep)):  # a folder: the artifact keeps a name of its own
                out.mkdir(parents=True, exist_ok=True)
                out = out / artifact_filename(info)
            with transfer_bar(f"pull {info.name}", info.size_bytes) as progress:
                await fetch_verified(store, info, out, progress)
            console.print(f"pulled {info.id} to {out} (sha256 verified)")
        elif args.command == "rm":
            await store.delete(args.id)
            console.print(f"removed {args.id}")
        elif args.command == "build":
            from model_registry.trt_build import build_and_push

            await build_and_push(Registry(store), args)
    finally:
        await store.close()
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command == "convert-darknet":  # a local conversion: no store to open
            from model_registry.darknet import save_converted

            classes = save_converted(args.cfg, args.weights, args.names, args.out)
            print(f"wrote {args.out} ({classes} classes)")
            return 0
        return asyncio.run(run(args))
    except (RegistryError, ConnectionError, ValueError) as exc:
        print(f"model-registry: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
