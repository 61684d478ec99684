"""Secrets kept off the command line: read from a file, never shown in a message."""

from __future__ import annotations

from pathlib import Path


def read_secret(path: str, what: str) -> str:
    """The first line of ``path`` (a password, a token); ValueError of one line if it cannot be had."""
    try:
        lines = Path(path).read_text().splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else exc
        raise ValueError(f"{what} {path}: {reason}") from None
    if not lines or not lines[0]:
        raise ValueError(f"{what} {path} is empty (the first line is the secret)")
    return lines[0]


def redact(url: str) -> str:
    """The URL as it may be shown (quoted): any password replaced by ***."""
    return repr(redact_url(url))


def redact_url(url: str) -> str:
    """``scheme://user:***@host/...``: the password of a URL's userinfo hidden (the last '@' before the
    path ends the userinfo, so a password holding '@' or '/' is hidden whole)."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        scheme, rest = "", url
    userinfo, at, host = rest.rpartition("@")
    if at and ":" in userinfo:
        rest = f"{userinfo.split(':', 1)[0]}:***@{host}"
    return f"{scheme}{sep}{rest}"
