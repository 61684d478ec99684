"""``model-registry build``: TensorRT engines built on the device that will run them.

One static engine per batch size (the paper's layout: a batch change is an engine swap), or with
``--profiles`` one engine with an optimization profile per batch size (a batch change is only a
context switch). The target (platform, SM, TensorRT, CUDA, precision) is recorded with each
engine; agents load only engines whose target matches their own.
"""

from __future__ import annotations

import argparse
import asyncio
from pathlib import Path
from typing import Any

from model_registry.errors import RegistryError
from model_registry.export import inspect_onnx
from model_registry.model_type import onnx_model_type
from model_registry.registry import Registry
from schemas import ArtifactInfo, ArtifactTarget


def target_from_facts(facts: dict[str, str]) -> ArtifactTarget:
    return ArtifactTarget(platform=facts["platform"], sm=facts["sm"], tensorrt=facts["tensorrt"], cuda=facts["cuda"])


def plan_builds(batch_sizes: list[int], profiles: bool) -> list[list[int]]:
    """Which batch sizes each engine serves: one engine for all (profiles) or one per size."""
    return [sorted(batch_sizes)] if profiles else [[size] for size in sorted(batch_sizes)]


def build_engine(onnx_path: Path, input_name: str, sizes: list[int], fp16: bool, out: Path) -> Path:
    """Build one engine serving ``sizes`` (one optimization profile per size) and write it to ``out``.

    FP16 on TensorRT 10/11 is a strongly typed build of an FP16 copy of the model (11.x has no
    other way); on 8.x it is the builder flag. Inputs and outputs stay float32 either way.
    """
    import tensorrt as trt

    from edge_agent.engines.trt_versions import fp16_route
    from model_registry.precision import convert_to_fp16

    source = onnx_path
    if fp16 and fp16_route(trt) == "fp16-onnx":
        source = convert_to_fp16(onnx_path, out.with_suffix(".fp16.onnx"))
    try:
        plan = _build_plan(trt, source, input_name, sizes, fp16 and fp16_route(trt) == "builder-flag")
    finally:
        if source != onnx_path:
            source.unlink(missing_ok=True)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(plan)
    return out


def _build_plan(trt: Any, source: Path, input_name: str, sizes: list[int], fp16_flag: bool) -> bytes:
    from edge_agent.engines.trt_versions import network_flags

    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(network_flags(trt))
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(source.read_bytes()):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise RegistryError(f"{source}: TensorRT cannot parse it: {errors}")
    # The model's own C, H, W (NanoDet 416, YOLO 640, ...): only the batch axis varies per profile.
    chw = tuple(int(d) for d in network.get_input(0).shape)[1:]
    if any(d <= 0 for d in chw):
        raise RegistryError(f"{source}: input {input_name} needs a fixed channels, height and width, has {chw}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, 1 << 30)
    if fp16_flag:
        config.set_flag(trt.BuilderFlag.FP16)
    for size in sizes:
        profile = builder.create_optimization_profile()
        shape = (size, *chw)
        profile.set_shape(input_name, shape, shape, shape)
        config.add_optimization_profile(profile)
    plan = builder.build_serialized_network(network, config)
    if plan is None:
        raise RegistryError(f"TensorRT failed to build {source} for batch sizes {sizes}")
    return bytes(plan)


async def build_and_push(registry: Registry, args: argparse.Namespace) -> list[ArtifactInfo]:
    from edge_agent.engines.tensorrt import device_facts, missing_runtime

    # A plan carries no graph: it records the type of the ONNX it is built from (checked before any build).
    model_type = await asyncio.to_thread(onnx_model_type, args.onnx, args.model_type)
    problem = missing_runtime()
    if problem:
        raise RegistryError(f"cannot build TensorRT engines here: {problem}")
    facts = device_facts()
    target = target_from_facts(facts)
    shape = await asyncio.to_thread(inspect_onnx, args.onnx)
    if shape.batch is not None:
        raise RegistryError(f"{args.onnx}: batch axis is fixed at {shape.batch}; export with a dynamic batch axis")
    precision = "fp16" if args.fp16 else "fp32"
    pushed: list[ArtifactInfo] = []
    for sizes in plan_builds(args.batch_sizes, args.profiles):
        tag = "-".join(map(str, sizes))
        out = args.workdir / f"{args.name}-{args.version}-b{tag}-{precision}-sm{target.sm}.plan"
        print(f"building {out.name} on {facts['gpu_name']} ...", flush=True)
        await asyncio.to_thread(build_engine, args.onnx, shape.input_name, sizes, args.fp16, out)
        pushed += await registry.push(out, args.name, args.version, batch_sizes=sizes, fmt="tensorrt",
                                      precision=precision, target=target, model_type=model_type)
        print(f"pushed {out.name}", flush=True)
    return pushed
