"""Child process of ``tests/tensorrt_releases.py``: loads the real ``tensorrt`` bindings found on
PYTHONPATH (entry points stubbed) and reports, as JSON on stdout, which of the dotted names read
from stdin the module lacks and what ``edge_agent.engines.trt_versions`` decides for it."""

from __future__ import annotations

import json
import os
import sys

sys.setdlopenflags(os.RTLD_LAZY | os.RTLD_GLOBAL)

import tensorrt_bindings as trt  # noqa: E402

sys.modules["tensorrt"] = trt

from edge_agent.engines import trt_versions  # noqa: E402


def resolves(dotted: str) -> bool:
    obj: object = trt
    for part in dotted.split("."):
        if not hasattr(obj, part):
            return False
        obj = getattr(obj, part)
    return True


required = json.loads(sys.stdin.read())
flags = trt.NetworkDefinitionCreationFlag
print(json.dumps({
    "version": trt.__version__,
    "missing": [name for name in required if not resolves(name)],
    "network_flags": trt_versions.network_flags(trt),
    "strongly_typed_bit": 1 << int(flags.STRONGLY_TYPED) if hasattr(flags, "STRONGLY_TYPED") else None,
    "explicit_batch_bit": 1 << int(flags.EXPLICIT_BATCH) if hasattr(flags, "EXPLICIT_BATCH") else None,
    "fp16_route": trt_versions.fp16_route(trt),
    "has_builder_fp16": hasattr(trt.BuilderFlag, "FP16"),
    "device_memory_attrs": [a for a in trt_versions.DEVICE_MEMORY_ATTRS if hasattr(trt.ICudaEngine, a)],
}))
