"""What a person sees: the live status line and the end-of-run summary."""

from __future__ import annotations

import sys
from typing import TextIO

from rich.console import Console
from rich.table import Table

from edge_agent.stats import WindowStats
from schemas import ProfileReport, RunSummary


def make_console() -> Console:
    """A terminal console, or a wide one when piped so tables are never cut."""
    console = Console()
    return console if console.is_terminal else Console(width=160)


def status_line(window: WindowStats, batch_size: int, dropped: int, misses: int, depths: dict[str, int]) -> str:
    lat = window.latency
    q = " ".join(f"{k}={v}" for k, v in depths.items())
    return (
        f"batch {batch_size:>2} | in {window.fps_in:5.1f} fps out {window.fps_out:5.1f} fps | "
        f"e2e p95 {lat['e2e'].p95_ms:7.1f} ms infer p50 {lat['infer'].p50_ms:6.1f} ms | "
        f"dropped {dropped} missed {misses} | queues {q}"
    )


class StatusLine:
    """Rewrites one line on a terminal; prints a line per update when piped (for logs)."""

    def __init__(self, stream: TextIO = sys.stderr) -> None:
        self.stream = stream
        self.tty = stream.isatty()

    def update(self, text: str) -> None:
        if self.tty:
            self.stream.write("\r\x1b[2K" + text)
        else:
            self.stream.write(text + "\n")
        self.stream.flush()

    def finish(self) -> None:
        if self.tty:
            self.stream.write("\n")
            self.stream.flush()


def print_summary(summary: RunSummary, console: Console | None = None) -> None:
    console = console or make_console()
    console.print(
        f"[bold]{summary.mode} run[/bold]: {summary.streams} stream(s), {summary.duration_s:.1f} s, "
        f"{summary.frames_in} frames in, {summary.frames_out} out ({summary.fps_out:.1f} fps), "
        f"dropped {summary.dropped}, corrupt {summary.corrupt}, deadline misses {summary.deadline_misses}"
    )
    sizes = ", ".join(f"{n} x batch {s}" for s, n in sorted(summary.batches_by_size.items()))
    console.print(f"batches: {sizes or 'none'}; batch size at end: {summary.batch_size}")
    table = Table(title="delay per stage (ms)")
    for col in ("stage", "p50", "p95", "p99", "max", "n"):
        table.add_column(col, justify="right")
    for stage, s in summary.latency.items():
        table.add_row(stage, f"{s.p50_ms:.1f}", f"{s.p95_ms:.1f}", f"{s.p99_ms:.1f}", f"{s.max_ms:.1f}", str(s.count))
    console.print(table)
    if summary.per_stream:
        streams = Table(title="streams (admission control)")
        for col in ("stream", "state", "link", "fps", "deadline ms", "in", "out", "dropped", "missed", "why"):
            streams.add_column(col, justify="left" if col in ("stream", "state", "link", "why") else "right")
        for st in summary.per_stream:
            link = (st.connection or "") + (f", {st.reconnects} reconnects" if st.reconnects else "")
            why = st.reason + (f"; last error: {st.last_error}" if st.last_error else "")
            streams.add_row(st.stream_id, st.state, link, f"{st.fps:g}", f"{st.deadline_ms:g}", str(st.frames_in),
                            str(st.frames_out), str(st.dropped), str(st.deadline_misses), why)
        console.print(streams)


def print_profile(report: ProfileReport, console: Console | None = None) -> None:
    console = console or make_console()
    table = Table(
        title=f"profile: {report.model} on {report.device} ({report.backend}), {report.fps:g} fps input, "
        f"mean of {report.batches_per_size} batches"
    )
    cols = ("batch", "pre ms", "infer ms", "post ms", "total ms", "RT limit ms", "margin ms", "RT ok",
            "fps", "engine fps", "peak MiB")
    per_row_engines = len({r.engine for r in report.rows}) > 1  # e.g. one registry artifact per size
    for col in cols:
        table.add_column(col, justify="right")
    if per_row_engines:
        table.add_column("engine", justify="left")
    for r in report.rows:
        cells = [
            str(r.batch_size), f"{r.pre_ms:.1f}", f"{r.infer_ms:.1f}", f"{r.post_ms:.1f}", f"{r.total_ms:.1f}",
            f"{r.realtime_limit_ms:.1f}", f"{r.margin_ms:+.1f}", "yes" if r.meets_realtime else "NO",
            f"{r.throughput_fps:.1f}", f"{r.infer_fps:.1f}", f"{r.peak_memory_bytes / 2**20:.0f}",
        ]
        table.add_row(*cells, *([r.engine or ""] if per_row_engines else []))
    console.print(table)
