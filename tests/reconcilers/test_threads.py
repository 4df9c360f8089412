"""The threads and connections that the operator's blocking client calls get."""

from __future__ import annotations

import asyncio
import threading

from kubernetes.client import ApiClient, Configuration

from gpufleet.reconcilers.threads import IO_THREADS, size_connection_pool, use_io_threads


def test_blocking_calls_get_as_many_threads_as_the_loop_asks_for_whatever_the_host() -> None:
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
