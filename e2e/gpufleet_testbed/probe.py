"""HTTP GETs for readiness probes that never leak a socket."""

from __future__ import annotations

import ssl
import urllib.error
import urllib.request


def get(url: str, context: ssl.SSLContext | None = None, timeout: float = 3.0) -> tuple[int, str]:
    """Status and body; an HTTP error status is a result, not an exception.

    urllib raises HTTPError for 5xx (a starting API server's /readyz) and the
    error holds the open socket; left to the garbage collector it becomes a
    ResourceWarning, which fails a warnings-as-errors test run.
    """
    try:
        with urllib.request.urlopen(url, timeout=timeout, context=context) as response:
            return int(response.status), response.read().decode(errors="replace")
    except urllib.error.HTTPError as error:
        with error:
            return int(error.code), error.read().decode(errors="replace")
