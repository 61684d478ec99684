"""Each backend's own settings, in the agent's settings tree under ``backends.<name>`` (as Frigate keeps a
detector's settings with the detector). Plain models here, so reading a config never imports a runtime."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field


class BackendSettings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    def options(self) -> dict[str, Any]:
        """Keyword arguments for the backend's engine: only what was set (the engine's defaults otherwise)."""
        return {k: v for k, v in self.model_dump().items() if v is not None}


class OnnxRuntimeSettings(BackendSettings):
    providers: list[str] | None = Field(default=None, max_length=8, description="execution providers in order "
                                        "(default: TensorRT, CUDA where present, then CPU)")
    intra_op_threads: int | None = Field(default=None, ge=1, le=256, description="threads per inference "
                                         "(default: ONNX Runtime's choice)")


class PyTorchSettings(BackendSettings):
    device: str | None = Field(default=None, max_length=32, pattern=r"^(cpu|cuda(:\d+)?)$",
                               description="cpu, cuda or cuda:N (default: cuda when PyTorch sees a GPU)")
    precision: Literal["auto", "fp32", "fp16"] | None = Field(
        default=None, description="auto (default): fp16 on a GPU, fp32 on the CPU")
    cuda_graphs: bool | None = Field(default=None, description="replay a CUDA graph per batch size (default off: "
                                     "not yet measured on a GPU)")


class TensorRtSettings(BackendSettings):
    """No settings yet: an engine file carries its own build options."""


BACKEND_SETTINGS: dict[str, type[BackendSettings]] = {
    "onnxruntime": OnnxRuntimeSettings, "pytorch": PyTorchSettings, "tensorrt": TensorRtSettings}
