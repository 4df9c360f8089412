"""Kubeconfig files for the components and for people."""

from __future__ import annotations

import json
from pathlib import Path

from gpufleet_testbed.pki import CertPair


def write(path: Path, *, server: str, ca: Path, client: CertPair, context: str) -> Path:
    """Writes a kubeconfig with file references (absolute paths).

    JSON is valid YAML, so kubectl, client-go and the Python client read it;
    file references keep the secrets in the 0600 key files.
    """
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {
                "name": context,
                "cluster": {"server": server, "certificate-authority": str(ca.resolve())},
            }
        ],
        "users": [
            {
                "name": context,
                "user": {
                    "client-certificate": str(client.cert.resolve()),
                    "client-key": str(client.key.resolve()),
                },
            }
        ],
        "contexts": [{"name": context, "context": {"cluster": context, "user": context}}],
        "current-context": context,
        "preferences": {},
    }
    path.write_text(json.dumps(config, indent=2) + "\n")
    path.chmod(0o600)
    return path
