"""Wire shapes and topic names."""

from __future__ import annotations

import json

import pytest

from schemas import (
    MAX_PAYLOAD_BYTES,
    MODEL_TYPES,
    AgentStatus,
    AgentTopic,
    ArtifactInfo,
    DesiredState,
    ModelAnnouncement,
    ModelTopic,
    PayloadError,
    TopicError,
    Topics,
    decode,
    encode,
)


def test_topics_round_trip() -> None:
    t = Topics("site1/edgebatch")
    assert t.telemetry("cam-box.1") == "site1/edgebatch/agents/cam-box.1/telemetry"
    assert t.parse(t.desired("a1")) == AgentTopic("a1", "desired")
    assert t.parse(t.model("nanodet")) == ModelTopic("nanodet")
    assert t.shared("ctl", t.all_agents("telemetry")) == "$share/ctl/site1/edgebatch/agents/+/telemetry"


@pytest.mark.parametrize("bad", ["a/b", "+", "#", "", "x" * 200])
def test_ids_that_would_break_the_topic_tree_are_refused(bad: str) -> None:
    with pytest.raises(TopicError):
        Topics().status(bad)


@pytest.mark.parametrize("topic", ["other/agents/a/status", "edgebatch/agents/a/nope", "edgebatch/x"])
def test_foreign_topics_do_not_parse(topic: str) -> None:
    with pytest.raises(TopicError):
        Topics().parse(topic)


def test_decode_round_trip_and_rejections() -> None:
    d = DesiredState(agent_id="a1", generation=3, batch_size=8, reason="test")
    assert decode(DesiredState, encode(d)) == d
    with pytest.raises(PayloadError) as e:
        decode(DesiredState, b'{"agent_id": "a1", "generation": 3, "colour": "red"}')
    assert e.value.reason == "invalid"
    with pytest.raises(PayloadError):
        decode(DesiredState, b"not json")
    with pytest.raises(PayloadError):
        decode(DesiredState, b'{"agent_id": "a1", "generation": 0}')
    with pytest.raises(PayloadError):
        decode(DesiredState, b'{"schema_version": 2, "agent_id": "a1", "generation": 1}')
    with pytest.raises(PayloadError) as e:
        decode(AgentStatus, b" " * (MAX_PAYLOAD_BYTES + 1))
    assert e.value.reason == "oversized"


def test_every_wire_field_is_described() -> None:
    import inspect

    import schemas.messages as messages

    for name, cls in inspect.getmembers(messages, inspect.isclass):
        if issubclass(cls, messages.WireModel) and cls is not messages.WireModel:
            undocumented = [f for f, info in cls.model_fields.items() if not info.description]
            assert not undocumented, f"{name}: {undocumented} have no description"
            assert cls.model_config.get("extra") == "forbid", name


def test_metrics_address_is_optional_bounded_and_left_out_when_unset() -> None:
    """A status without it is byte-for-byte what a controller that predates the field reads."""
    plain = encode(AgentStatus(agent_id="a1", state="online"))
    assert b"metrics_address" not in plain
    for address in ("cam-box-1.local:9108", "10.0.0.7:9108", "[fd00::7]:9108"):
        status = AgentStatus(agent_id="a1", state="online", metrics_address=address)
        assert decode(AgentStatus, encode(status)) == status
    for bad in ("http://x:9108/metrics", "x", "x:", "a b:1", "x:123456", "h" * 300 + ":1"):
        with pytest.raises(PayloadError):
            decode(AgentStatus, b'{"agent_id": "a1", "state": "online", "metrics_address": "%s"}' % bad.encode())


def test_model_types_are_the_adapter_keys() -> None:
    """The wire's list of detector families is the edge agent's adapters, kept in schemas (which imports nothing
    of the agent): a family added on one side only fails here."""
    from edge_agent.adapters import ADAPTERS

    assert sorted(MODEL_TYPES) == sorted(ADAPTERS)


OLD_ARTIFACT = {"id": "a1", "name": "nanodet", "version": "1", "batch_sizes": [4], "format": "onnx",
                "sha256": "0" * 64, "size_bytes": 10}  # as written before artifacts recorded their model type


def test_records_and_messages_without_a_model_type_still_load_as_unknown() -> None:
    old = ArtifactInfo.model_validate_json(json.dumps(OLD_ARTIFACT))
    assert old.model_type is None
    announcement = decode(ModelAnnouncement, json.dumps({"name": "nanodet", "latest_version": "1",
                                                         "artifacts": [OLD_ARTIFACT]}).encode())
    assert announcement.artifacts[0].model_type is None
    serving = {"model": "nanodet", "version": "1", "batch_size": 2, "backend": "onnxruntime"}
    status = decode(AgentStatus, json.dumps({"agent_id": "a1", "state": "online", "serving": serving}).encode())
    assert status.serving is not None and status.serving.model_type is None
    typed = ArtifactInfo.model_validate(OLD_ARTIFACT | {"model_type": "yolo-v5"})
    assert decode(ModelAnnouncement, encode(ModelAnnouncement(name="nanodet", latest_version="1",
                                                              artifacts=[typed]))).artifacts[0].model_type == "yolo-v5"


@pytest.mark.parametrize("bad", ["centernet", "YOLO-V5", "", 5])
def test_a_model_type_outside_the_known_families_is_refused(bad: object) -> None:
    payload = {"name": "nanodet", "latest_version": "1", "artifacts": [OLD_ARTIFACT | {"model_type": bad}]}
    with pytest.raises(PayloadError, match="model_type|Input should be"):
        decode(ModelAnnouncement, json.dumps(payload).encode())
