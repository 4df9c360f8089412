"""The threads and connections that the operator's blocking client calls get."""

from __future__ import annotations

import asyncio
import json
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from types import SimpleNamespace
from typing import Any

import pytest
from kubernetes.client import ApiClient, Configuration

from gpufleet.reconcilers.kube import Kube
from gpufleet.reconcilers.threads import IO_THREADS, size_connection_pool, use_io_threads


def test_blocking_calls_get_as_many_threads_as_the_loop_asks_for_whatever_the_host(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(os, "cpu_count", lambda: 1)  # asyncio's own pool: 5 threads

    async def at_once() -> int:
        use_io_threads(asyncio.get_running_loop())
        # Each call holds its thread until all of them have one: only a pool of IO_THREADS
        # lets them all through (asyncio's default is cores + 4).
        barrier = threading.Barrier(IO_THREADS, timeout=5)
        await asyncio.gather(*(asyncio.to_thread(barrier.wait) for _ in range(IO_THREADS)))
        return barrier.n_waiting

    assert asyncio.run(at_once()) == 0


def test_the_client_keeps_as_many_connections_as_there_are_threads() -> None:
    # A remote cluster's client: tests/security/test_kubeconfig.py.
    api = ApiClient(size_connection_pool(Configuration()))

    assert api.rest_client.pool_manager.connection_pool_kw["maxsize"] == IO_THREADS


class Leases:
    """The API server's Lease read: one Lease, as raw JSON."""

    def read_namespaced_lease(self, name: str, namespace: str, **_: Any) -> SimpleNamespace:
        return SimpleNamespace(data=json.dumps({"metadata": {"name": name}}).encode())


def test_the_lease_is_read_while_every_io_thread_is_taken() -> None:
    # A surge's writes can fill the I/O threads; a renewal queued behind them could miss its
    # deadline and cost the leader its term.
    async def read() -> dict[str, Any] | None:
        asyncio.get_running_loop().set_default_executor(ThreadPoolExecutor(1))
        release = threading.Event()
        taken = asyncio.ensure_future(asyncio.to_thread(release.wait, 5))
        kube = Kube(ApiClient(), "gpufleet-system")
        kube.coordination = Leases()  # type: ignore[assignment]
        try:
            return await asyncio.wait_for(kube.read_lease("gpufleet-system", "gpufleet"), 2)
        finally:
            release.set()
            await taken

    assert asyncio.run(read()) == {"metadata": {"name": "gpufleet"}}
