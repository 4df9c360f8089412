"""The threads the operator's blocking client calls run in.

The Kubernetes client and the cloud SDKs block, so the loop calls them through
`asyncio.to_thread`, on the event loop's default executor. asyncio sizes that pool by the
host's cores (cores + 4, at most 32): six threads on a two-core node, for calls that spend
their time waiting on a server. In a surge a tick's scale and status writes
(`WRITE_CONCURRENCY`, `REPORT_CONCURRENCY`) and its drivers' reads and node writes queued
behind those six. The pool is sized here by the concurrency the loop asks for, not by the
host, and each client's connection pool with it: a request beyond a pool's size opens a
TLS connection of its own and throws it away after.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

from kubernetes.client import Configuration

T = TypeVar("T")

# The report's and the actuation's bounds (16 + 8), and room for the drivers' reads. The
# drivers' writes (the Simulated driver's, 8 per node pool) may ask for more: they queue.
IO_THREADS = 32

# The Lease's reads and renewals (reconcilers/leader.py) have threads of their own: queued
# behind a surge's writes, a leader's renewal could wait past its deadline and lose the term.
_LEASE_THREADS = ThreadPoolExecutor(max_workers=2, thread_name_prefix="gpufleet-lease")


def use_io_threads(loop: asyncio.AbstractEventLoop) -> None:
    """Give `loop` a default executor of IO_THREADS threads (once per process start)."""
    loop.set_default_executor(
        ThreadPoolExecutor(max_workers=IO_THREADS, thread_name_prefix="gpufleet-io")
    )


async def in_lease_thread(call: Callable[[], T]) -> T:
    """`call()`, in a Lease thread."""
    return await asyncio.get_running_loop().run_in_executor(_LEASE_THREADS, call)


def size_connection_pool(configuration: Configuration) -> Configuration:
    """`configuration`, with a connection pool per server as large as the thread pool."""
    configuration.connection_pool_maxsize = IO_THREADS
    return configuration
