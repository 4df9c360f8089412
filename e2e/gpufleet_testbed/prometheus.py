"""A Prometheus server of our own (Debian's binary, our config and port)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from gpufleet_testbed import probe

SCRAPE_INTERVAL_SECONDS = 1


def binary() -> Path:
    found = shutil.which("prometheus")
    if not found:
        raise FileNotFoundError("prometheus not found; install it: apt-get install -y prometheus")
    return Path(found)


def write_config(path: Path, exporter_targets: list[str]) -> Path:
    # JSON is YAML; a 1 s interval keeps "changed value is visible" waits short.
    config = {
        "global": {
            "scrape_interval": f"{SCRAPE_INTERVAL_SECONDS}s",
            "scrape_timeout": f"{SCRAPE_INTERVAL_SECONDS}s",
            "evaluation_interval": f"{SCRAPE_INTERVAL_SECONDS}s",
        },
        "scrape_configs": [
            {
                "job_name": "gpufleet-testbed-exporter",
                # Keep the exporter's labels as the real exporters' would be.
                "honor_labels": True,
                "static_configs": [{"targets": exporter_targets}],
            }
        ],
    }
    path.write_text(json.dumps(config, indent=2) + "\n")
    return path


def argv(config: Path, data_dir: Path, port: int) -> list[str]:
    return [
        str(binary()),
        f"--config.file={config}",
        f"--storage.tsdb.path={data_dir}",
        f"--web.listen-address=127.0.0.1:{port}",
        "--storage.tsdb.retention.time=2h",
        # Lets tests reload a changed config without a restart.
        "--web.enable-lifecycle",
        "--log.level=warn",
    ]


def is_ready(url: str) -> bool:
    status, _ = probe.get(f"{url}/-/ready")
    return status == 200


def targets_up(url: str) -> bool:
    status, body = probe.get(f"{url}/api/v1/targets")
    if status != 200:
        return False
    active = json.loads(body)["data"]["activeTargets"]
    return bool(active) and all(t.get("health") == "up" for t in active)
