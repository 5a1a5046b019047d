"""Reading a /metrics page the way Prometheus does: prometheus_client's own text parser, so a page
it cannot parse fails the test that scraped it.

    page = scrape(url)                     # or: await ascrape(url) while the service's loop is ours
    page.value("cube_grpc_server_handled_total", method="CreateSandbox", code="OK")
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import httpx
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

PROMETHEUS_TEXT = "text/plain; version=0.0.4"


@dataclass(frozen=True)
class Page:
    text: str
    families: dict[str, str]   # family name -> type (counter, gauge, histogram, untyped ...)
    samples: list[Sample]

    def matching(self, name: str, **labels: str) -> Iterator[Sample]:
        """Samples named ``name`` whose labels include ``labels``."""
        for s in self.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                yield s

    def value(self, name: str, **labels: str) -> float:
        """The sum of the matching samples (0 when there is none: a counter not moved yet)."""
        return sum(s.value for s in self.matching(name, **labels))

    def has(self, name: str, **labels: str) -> bool:
        return any(True for _ in self.matching(name, **labels))

    def label_values(self, name: str, label: str) -> set[str]:
        return {s.labels[label] for s in self.samples if s.name == name and label in s.labels}


def parse(text: str) -> Page:
    families: dict[str, str] = {}
    samples: list[Sample] = []
    for family in text_string_to_metric_families(text):
        families[family.name] = family.type
        samples.extend(family.samples)
    return Page(text, families, samples)


def _checked(r: httpx.Response) -> Page:
    assert r.status_code == 200, f"{r.request.url}: {r.status_code} {r.text[:300]}"
    assert r.headers["content-type"].startswith(PROMETHEUS_TEXT), r.headers["content-type"]
    return parse(r.text)


def scrape(url: str, timeout: float = 10.0) -> Page:
    return _checked(httpx.get(url, timeout=timeout))


async def ascrape(url: str, timeout: float = 10.0) -> Page:
    """For a listener whose scrapes run in this test's own event loop: a blocking get would wait on it."""
    async with httpx.AsyncClient(timeout=timeout) as client:
        return _checked(await client.get(url))
