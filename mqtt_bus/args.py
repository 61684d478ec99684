"""Command-line value types the three CLIs share (broker URLs, topic segments, bounded numbers), and a
parser whose errors are one line: a bad flag reads ``prog: error: ...`` and exits 2, never a traceback."""

from __future__ import annotations

import argparse
import math
import os
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


# Flag -> environment variable for every CLI that connects to the broker. A flag wins over its
# variable; a variable's value goes through the same check as the flag's (argparse converts string
# defaults), so a bad one is the same one-line error.
BROKER_ENV = {
    "broker": "EDGEBATCH_BROKER_URL",
    "broker_password_file": "EDGEBATCH_BROKER_PASSWORD_FILE",
    "ca_file": "EDGEBATCH_BROKER_CA_FILE",
    "client_cert": "EDGEBATCH_BROKER_CLIENT_CERT",
    "client_key": "EDGEBATCH_BROKER_CLIENT_KEY",
}


def add_broker_options(parser: argparse.ArgumentParser, default_url: str | None, purpose: str,
                       settings_tree: bool = False) -> None:
    """``--broker`` and the files that go with it (password, CA, client certificate). With
    ``settings_tree`` a flag not given is absent from the namespace: the caller's settings tree (file,
    environment, defaults) decides, and knows where each value came from."""
    env: dict[str, str | None] = {key: os.environ.get(var) or None for key, var in BROKER_ENV.items()}
    env["broker"] = env["broker"] or default_url
    if settings_tree:
        env = dict.fromkeys(BROKER_ENV, argparse.SUPPRESS)
    group = parser.add_argument_group(
        "broker connection", "each flag may come from its environment variable instead; the flag wins")
    group.add_argument("--broker", type=broker_url, default=env["broker"],
                       help=f"mqtt://[user@]host[:port] or mqtts://... (TLS, port 8883): {purpose} "
                       f"(env {BROKER_ENV['broker']}{'; default ' + default_url if default_url else ''})")
    group.add_argument("--broker-password-file", type=readable_file, default=env["broker_password_file"],
                       help="file whose first line is the broker password, so it is not on the command line "
                       f"(env {BROKER_ENV['broker_password_file']})")
    group.add_argument("--ca-file", type=readable_file, default=env["ca_file"],
                       help=f"CA bundle that signed an mqtts:// broker's certificate (env {BROKER_ENV['ca_file']})")
    group.add_argument("--client-cert", type=readable_file, default=env["client_cert"],
                       help=f"PEM client certificate for an mqtts:// broker (env {BROKER_ENV['client_cert']})")
    group.add_argument("--client-key", type=readable_file, default=env["client_key"],
                       help=f"its private key (env {BROKER_ENV['client_key']})")


def broker_settings(args: argparse.Namespace) -> BrokerSettings:
    """The settings the flags of ``add_broker_options`` describe; ValueError (one line) if they clash."""
    return BrokerSettings.build(args.broker, ca_file=args.ca_file, password_file=args.broker_password_file,
                                client_cert=args.client_cert, client_key=args.client_key)
