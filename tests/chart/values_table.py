"""The chart README's values table, made from values.yaml's `# --` comments (helm-docs style).

python tests/chart/values_table.py           # print the table
python tests/chart/values_table.py --write   # replace it in charts/gpufleet/README.md
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path
from typing import Any

import yaml

CHART = Path(__file__).resolve().parents[2] / "charts" / "gpufleet"
BEGIN, END = "<!-- values:begin -->", "<!-- values:end -->"


def documented_keys(text: str) -> dict[str, str]:
    """Dotted key -> its `# --` comment (continuation lines joined)."""
    docs: dict[str, str] = {}
    stack: list[tuple[int, str]] = []
    comment: list[str] = []
    for line in text.splitlines():
        stripped = line.strip()
        if stripped.startswith("# --"):
            comment = [stripped[4:].strip()]
            continue
        if stripped.startswith("#") and comment:
            comment.append(stripped[1:].strip())
            continue
        match = re.match(r"^( *)([A-Za-z][\w]*):", line)
        if not match:
            comment = [] if not stripped else comment
            continue
        indent, key = len(match.group(1)), match.group(2)
        stack = [(i, k) for i, k in stack if i < indent]
        path = ".".join([k for _, k in stack] + [key])
        stack.append((indent, key))
        if comment:
            docs[path] = " ".join(comment)
        comment = []
    return docs


def leaves(values: Any, prefix: str = "") -> dict[str, Any]:
    """Dotted path -> value for every key that is not a map of further documented keys."""
    out: dict[str, Any] = {}
    for key, value in values.items():
        path = f"{prefix}{key}"
        out[path] = value
        if isinstance(value, dict) and value:
            out.update(leaves(value, f"{path}."))
    return out


def table() -> str:
    text = (CHART / "values.yaml").read_text()
    docs = documented_keys(text)
    values = leaves(yaml.safe_load(text))
    rows = ["| key | default | description |", "| --- | --- | --- |"]
    for key, description in docs.items():
        default = json.dumps(values[key], separators=(", ", ": "))
        rows.append(f"| `{key}` | `{default}` | {description} |")
    return "\n".join(rows)


def readme_with_table(readme: str) -> str:
    before, rest = readme.split(BEGIN, 1)
    _, after = rest.split(END, 1)
    return f"{before}{BEGIN}\n{table()}\n{END}{after}"


if __name__ == "__main__":
    if sys.argv[1:] == ["--write"]:
        path = CHART / "README.md"
        path.write_text(readme_with_table(path.read_text()))
    else:
        print(table())
