"""Admission maths (pure): figures worked by hand."""

from __future__ import annotations

import pytest

from edge_agent.admission import (
    MEASURED_AFTER,
    BatchCost,
    DeviceProfile,
    StreamDemand,
    admit,
    admit_in_order,
    fit,
    shed_until_fit,
)
from schemas import ProfileReport, ProfileRow


def cpu_profile() -> DeviceProfile:
    # Like this 2-core CPU: ~15 ms a frame whatever the batch size (b1 17, b2 31, b4 60 ms).
    return DeviceProfile({1: BatchCost(1, 1, 15, 1), 2: BatchCost(2, 1, 29, 1), 4: BatchCost(4, 2, 56, 2)})


def cam(i: int, fps: float = 24, deadline_ms: float = 1000) -> StreamDemand:
    return StreamDemand(f"s{i}", fps, deadline_ms)


def test_utilisation_latency_and_best_batch_size_by_hand() -> None:
    result = fit(cpu_profile(), [cam(0), cam(1)])  # 48 fps
    # b4: period 60 ms -> 60 * 48 / 4 / 1000 = 0.72 <= 0.8; latency 3/48 s + 60 + 60 = 182.5 ms
    assert result.batch_size == 4 and result.fits
    assert result.utilisation == pytest.approx(0.72)
    assert result.latency_ms == pytest.approx(3000 / 48 + 120)
    # b2 would be 31 * 48 / 2 / 1000 = 0.744: fits too, but b4 is further from every limit.
    assert fit(DeviceProfile({2: cpu_profile().costs[2]}), [cam(0), cam(1)]).fits


def test_four_24_fps_streams_do_not_fit_where_two_do_and_the_refusal_says_why() -> None:
    decisions = admit_in_order(cpu_profile(), [cam(i) for i in range(4)])
    assert [d.admitted for d in decisions] == [True, True, False, False]
    refused = decisions[2]
    assert refused.limit == "throughput" and refused.limiting_stream == "s2"
    assert refused.total_fps == 72 and refused.streams == 3
    assert refused.utilisation == pytest.approx(60 * 72 / 4 / 1000)  # 1.08 at the best size, b4
    assert refused.batch_size == 4 and "1.08 > headroom 0.80" in refused.reason
    # The fourth is checked against the two admitted, not against the refused third.
    assert decisions[3].streams == 3


def test_headroom_is_the_admission_margin() -> None:
    streams = [cam(0), cam(1)]
    assert not admit(cpu_profile(), streams[:1], streams[1], headroom=0.7).admitted  # needs 0.72
    assert admit(cpu_profile(), streams[:1], streams[1], headroom=0.75).admitted
    with pytest.raises(ValueError):
        fit(cpu_profile(), streams, headroom=1.5)


def test_a_tight_deadline_refuses_even_when_throughput_is_fine() -> None:
    # 1 stream of 10 fps: b1 is 17 ms a batch, utilisation 0.17. Latency at b1: 0 + 17 + 17 = 34 ms.
    ok = admit(cpu_profile(), [], cam(0, fps=10, deadline_ms=40))
    assert ok.admitted and ok.batch_size == 1 and ok.predicted_latency_ms == pytest.approx(34)
    late = admit(cpu_profile(), [cam(0, fps=10, deadline_ms=1000)], cam(1, fps=10, deadline_ms=30))
    assert not late.admitted and late.limit == "deadline" and late.limiting_stream == "s1"


def gpu_profile() -> DeviceProfile:
    # Inference on an accelerator: the CPU stages overlap it. b8 runs 8 frames in 20 ms.
    return DeviceProfile({1: BatchCost(1, 1, 10, 1), 8: BatchCost(8, 8, 20, 4)}, overlap=True)


def test_overlapping_stages_cost_their_maximum_not_their_sum() -> None:
    p = gpu_profile()
    assert p.period_ms(8) == 20 and p.delay_ms(8) == 32
    p.overlap = False
    assert p.period_ms(8) == 32


def test_a_newcomer_that_would_make_an_admitted_stream_late_is_refused_and_names_it() -> None:
    # 310 fps only keeps up at b8 (utilisation 20 * 310 / 8 / 1000 = 0.775); its latency there is
    # 7/310 s + 20 + 32 = 74.6 ms: inside s0's 100 ms, past a 60 ms one.
    assert admit(gpu_profile(), [cam(0, fps=10, deadline_ms=100)], cam(1, fps=300)).admitted
    decision = admit(gpu_profile(), [cam(0, fps=10, deadline_ms=60)], cam(1, fps=300))
    assert not decision.admitted
    assert decision.limit == "deadline" and decision.limiting_stream == "s0" and decision.batch_size == 8
    assert decision.predicted_latency_ms == pytest.approx(7000 / 310 + 52, abs=0.01)
    assert decision.predicted_delay_ms == 32


def test_measured_batches_replace_the_start_up_guess_after_a_few() -> None:
    p = cpu_profile()
    slow = BatchCost(4, 4, 100, 4, 8)
    for _ in range(MEASURED_AFTER - 1):
        p.observe(slow)
    assert p.period_ms(4) == 60, "a few batches do not yet outvote the profile"
    p.observe(slow)
    assert p.is_measured(4) and p.period_ms(4) == pytest.approx(116)
    # The guesses for sizes not measured yet move as far as the measured one did (116 / 60).
    assert p.drift() == pytest.approx(116 / 60)
    assert p.period_ms(2) == pytest.approx(31 * 116 / 60)
    assert not admit(p, [cam(0)], cam(1)).admitted
    for _ in range(MEASURED_AFTER):  # a size served (another engine swapped in) joins the choice once measured
        p.observe(BatchCost(16, 16, 200, 16))
    assert p.batch_sizes == [1, 2, 4, 16] and p.period_ms(16) == 232 and p.drift() == pytest.approx(116 / 60)


def test_derate_scales_every_figure() -> None:
    p = cpu_profile()
    assert fit(p, [cam(0), cam(1)]).fits
    p.derate = 1.2  # 0.72 x 1.2 = 0.864 > 0.8
    assert not fit(p, [cam(0), cam(1)]).fits


def test_shedding_parks_the_most_recently_admitted_first() -> None:
    p = cpu_profile()
    p.derate = 1.2
    kept, parked, result = shed_until_fit(p, [cam(0), cam(1), cam(2)])
    assert [s.stream_id for s in kept] == ["s0"] and [s.stream_id for s in parked] == ["s1", "s2"]
    assert result.fits


def test_no_streams_fit_trivially_and_an_empty_profile_refuses() -> None:
    assert fit(cpu_profile(), []).fits
    refused = admit(DeviceProfile({}), [], cam(0))
    assert not refused.admitted and refused.limit == "profile"
    with pytest.raises(ValueError):
        StreamDemand("x", 0, 100)


def test_profile_from_the_profile_command_report() -> None:
    row = dict(realtime_limit_ms=0, margin_ms=0, meets_realtime=True, throughput_fps=1, infer_fps=1,
               peak_memory_bytes=0, memory_kind="process_rss")
    report = ProfileReport(device="x86_64 CPU x2", backend="onnxruntime", model="m", source="v", fps=24,
                           batches_per_size=4, rows=[
                               ProfileRow(batch_size=1, pre_ms=1, infer_ms=15, post_ms=1, total_ms=17, **row),
                               ProfileRow(batch_size=4, pre_ms=2, infer_ms=56, post_ms=2, total_ms=60, **row)])
    p = DeviceProfile.from_report(report)
    assert p.batch_sizes == [1, 4] and not p.overlap and p.period_ms(4) == 60
    assert DeviceProfile.from_report(report, sizes=[4]).batch_sizes == [4]
    assert p.with_decode_ms_per_frame(2).period_ms(4) == 68
