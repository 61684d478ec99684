"""An artifact's detector family (the adapter that decodes it): given, checked against the ONNX graph, or
inferred from it. The families and their shape rules are the edge agent's adapters (``edge_agent.adapters``,
imported through its public API, lazily: only a push of an ONNX model needs them)."""

from __future__ import annotations

from pathlib import Path

from model_registry.errors import ModelTypeMismatch, RegistryError


def onnx_model_type(path: Path, given: str | None) -> str | None:
    """``given`` if the graph fits it, else ``ModelTypeMismatch``; without ``given``, the type the graph
    says unambiguously (``detect_model_type``), or None (unknown) where it does not."""
    import onnx

    from edge_agent.adapters import AdapterError, check_model_type, detect_model_type, input_size_of, make_adapter

    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # protobuf DecodeError and friends
        raise RegistryError(f"{path}: not an ONNX model ({type(exc).__name__})") from exc
    if given is None:
        try:
            return detect_model_type(model)
        except AdapterError:
            return None  # ambiguous (or not a detector head): unknown unless given
    size = input_size_of(model)
    try:
        check_model_type(model, given)
    except AdapterError as exc:
        raise ModelTypeMismatch(f"{path.name}: {exc}") from exc
    try:
        adapter = make_adapter(given, [], size)
        adapter.check_engine(size or adapter.input_size, [o.name for o in model.graph.output])
    except AdapterError as exc:
        raise ModelTypeMismatch(f"{path.name}: --model-type {given} does not fit the model: {exc}") from exc
    return given
