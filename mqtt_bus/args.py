"""Command-line value types the three CLIs share (broker URLs, topic segments, bounded numbers), and a
parser whose errors are one line: a bad flag reads ``prog: error: ...`` and exits 2, never a traceback."""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable
from typing import NoReturn

from mqtt_bus.bus import BrokerSettings
from schemas.topics import TopicError, Topics, check_segment


class OneLineErrorParser(argparse.ArgumentParser):
    """Prints one line on a bad flag (``--help`` still shows the usage); sub-commands inherit it."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message}\n")


def broker_url(text: str) -> str:
    try:
        BrokerSettings.from_url(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text


def readable_file(text: str) -> str:
    try:
        with open(text, "rb"):
            pass
    except OSError as exc:
        raise argparse.ArgumentTypeError(f"{text}: {exc.strerror or exc}") from None
    return text


def topic_prefix(text: str) -> str:
    try:
        Topics(text)
    except TopicError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text


def segment(what: str) -> Callable[[str], str]:
    """An id that becomes one topic segment (agent id, controller id, model name): no '/', '+', '#'."""

    def check(text: str) -> str:
        try:
            return check_segment(text, what)
        except TopicError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    return check


def bounded_float(low: float, high: float, low_inclusive: bool = False) -> Callable[[str], float]:
    """A finite number in (low, high] (or [low, high])."""

    def check(text: str) -> float:
        value = finite_float(text)
        above = value >= low if low_inclusive else value > low
        if not (above and value <= high):
            bracket = "[" if low_inclusive else "("
            raise argparse.ArgumentTypeError(f"{text} must be in {bracket}{low:g}, {high:g}]")
        return value

    return check


def finite_float(text: str) -> float:
    """A number, not NaN or infinity (a component checks its own range and names it)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"{text!r} is not a finite number")
    return value


def batch_list(text: str) -> list[int]:
    """Comma-separated batch sizes, each 1..1024 (what the wire allows), sorted without repeats."""
    try:
        sizes = sorted({int(t) for t in text.split(",") if t.strip()})
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of integers") from None
    if not sizes or sizes[0] < 1 or sizes[-1] > 1024:
        raise argparse.ArgumentTypeError(f"{text!r}: batch sizes must be integers between 1 and 1024")
    return sizes


def bounded_int(low: int, high: int) -> Callable[[str], int]:
    def check(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"{value} must be between {low} and {high}")
        return value

    return check
