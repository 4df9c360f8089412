"""A fake Prometheus on loopback for the source's tests (fake_prometheus.py)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from .fake_prometheus import FakePrometheus


@pytest.fixture
def prom() -> Iterator[FakePrometheus]:
    fake = FakePrometheus()
    url, server = fake.serve()
    fake.url = url  # type: ignore[attr-defined]
    yield fake
    server.shutdown()
    server.server_close()
