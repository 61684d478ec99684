"""Reading /metrics and /healthz over real HTTP (urllib, on a thread) with prometheus-client's own parser."""

from __future__ import annotations

import asyncio
import json
import urllib.error
import urllib.request

from prometheus_client.parser import text_string_to_metric_families

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]
# The series names a family of each type has (what PromQL can name), listed or not in this scrape.
SERIES_OF = {
    "counter": lambda name: [f"{name}_total"],
    "histogram": lambda name: [f"{name}_bucket", f"{name}_sum", f"{name}_count"],
}


def fetch(url: str, token: str | None = None) -> tuple[int, str]:
    """GET over real HTTP, with a bearer token if given: (status, body), errors included."""
    request = urllib.request.Request(url)
    if token is not None:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


async def http_get(url: str, token: str | None = None) -> tuple[int, str]:
    return await asyncio.to_thread(fetch, url, token)


async def healthz(port: int) -> tuple[int, dict[str, object]]:
    status, body = await http_get(f"http://127.0.0.1:{port}/healthz")
    return status, json.loads(body)


async def scrape(port: int, token: str | None = None) -> tuple[set[str], Samples]:
    """(every series name the families listed can have, sampled now or not; every sample by name and labels)."""
    status, text = await http_get(f"http://127.0.0.1:{port}/metrics", token)
    assert status == 200, text
    names: set[str] = set()
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        names.update(SERIES_OF.get(family.type, lambda n: [n])(family.name))
        for s in family.samples:
            samples[(s.name, frozenset(s.labels.items()))] = s.value
    return names, samples


def value(samples: Samples, name: str, **labels: str) -> float | None:
    return samples.get((name, frozenset(labels.items())))


def label_values(samples: Samples, name: str, label: str) -> set[str]:
    return {dict(key)[label] for n, key in samples if n == name and label in dict(key)}
