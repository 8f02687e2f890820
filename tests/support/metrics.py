"""Scrape a live app's /metrics into {(sample name, labels): value}."""

from __future__ import annotations

import httpx
from prometheus_client.parser import text_string_to_metric_families

from tests.support.live import LiveApp

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape(app: LiveApp) -> Samples:
    with httpx.Client(base_url=app.url, trust_env=False) as client:
        response = client.get("/metrics")
    assert response.status_code == 200, response.text
    samples: Samples = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return samples
