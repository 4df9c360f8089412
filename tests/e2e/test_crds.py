"""The generated CRDs and the examples against a real API server."""

from __future__ import annotations

import re
import uuid
from pathlib import Path
from typing import Any

import pytest
import yaml

from gpufleet_testbed.kubectl import Kubectl

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]
CRD_FILES = sorted((REPO / "crds").glob("*.yaml"))
EXAMPLES = REPO / "examples"
SKIPPED_EXAMPLE_DIRS = ("invalid", "scenarios")
VALID_EXAMPLES = sorted(
    p
    for p in EXAMPLES.rglob("*.yaml")
    if p.relative_to(EXAMPLES).parts[0] not in SKIPPED_EXAMPLE_DIRS
)
INVALID_EXAMPLES = sorted((EXAMPLES / "invalid").glob("*.yaml"))
EXPECT_ANNOTATION = "gpufleet.io/expect-error"
EXPECT_COMMENT = re.compile(r"^#\s*expect-error:\s*(?P<text>.+?)\s*$")


def _docs(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if isinstance(d, dict)]


def _crds() -> list[dict[str, Any]]:
    return [d for p in CRD_FILES for d in _docs(p) if d.get("kind") == "CustomResourceDefinition"]


def _params(paths: list[Path], base: Path, missing: str) -> list[Any]:
    if not paths:
        return [pytest.param(None, marks=pytest.mark.skip(reason=missing))]
    return [pytest.param(p, id=str(p.relative_to(base))) for p in paths]


def _crd_params() -> list[Any]:
    crds = _crds()
    if not crds:
        return [pytest.param(None, marks=pytest.mark.skip(reason="no CRDs in crds/ yet"))]
    return [pytest.param(c, id=c["metadata"]["name"]) for c in crds]


def expected_error(path: Path) -> str | None:
    """The text a rejection must contain: leading `# expect-error:` or annotation."""
    for line in path.read_text().splitlines():
        stripped = line.strip()
        if not stripped or stripped == "---":
            continue
        if not stripped.startswith("#"):
            break
        match = EXPECT_COMMENT.match(stripped)
        if match:
            return match.group("text")
    for doc in _docs(path):
        annotations = (doc.get("metadata") or {}).get("annotations") or {}
        if EXPECT_ANNOTATION in annotations:
            return str(annotations[EXPECT_ANNOTATION])
    return None


def _ensure_namespaces(kubectl: Kubectl, path: Path) -> None:
    # A dry-run create in a missing namespace fails for the wrong reason.
    for doc in _docs(path):
        namespace = (doc.get("metadata") or {}).get("namespace")
        if namespace:
            kubectl.run("create", "namespace", namespace, check=False)


@pytest.fixture(scope="session")
def installed_crds(kubectl: Kubectl) -> list[dict[str, Any]]:
    crds = _crds()
    if not crds:
        pytest.skip("no CRDs in crds/ yet: generate them (gpufleet crds) before the e2e suite")
    for path in CRD_FILES:
        kubectl.run("apply", "--server-side", "--force-conflicts", "-f", str(path))
    names = [f"crd/{c['metadata']['name']}" for c in crds]
    kubectl.run("wait", "--for=condition=Established", "--timeout=60s", *names)
    return crds


@pytest.mark.parametrize("crd", _crd_params())
def test_crd_is_established(kubectl: Kubectl, installed_crds: Any, crd: dict[str, Any]) -> None:
    live = kubectl.json("get", "crd", crd["metadata"]["name"])
    conditions = {c["type"]: c["status"] for c in live["status"]["conditions"]}
    assert conditions.get("Established") == "True"
    assert conditions.get("NamesAccepted") == "True"
    # A non-structural schema is accepted but flagged; the operator needs it structural.
    assert conditions.get("NonStructuralSchema") in (None, "False"), live["status"]["conditions"]


@pytest.mark.parametrize("path", _params(VALID_EXAMPLES, EXAMPLES, "no examples in examples/ yet"))
def test_example_is_accepted(kubectl: Kubectl, installed_crds: Any, path: Path) -> None:
    _ensure_namespaces(kubectl, path)
    done = kubectl.run("apply", "--server-side", "--dry-run=server", "-f", str(path), check=False)
    assert done.returncode == 0, f"{path.name} was rejected:\n{done.stderr}"


@pytest.mark.parametrize(
    "path", _params(INVALID_EXAMPLES, EXAMPLES, "no examples in examples/invalid/ yet")
)
def test_invalid_example_is_rejected(kubectl: Kubectl, installed_crds: Any, path: Path) -> None:
    expected = expected_error(path)
    assert expected, f"{path.name} declares no `# expect-error: <text>` (or {EXPECT_ANNOTATION})"
    _ensure_namespaces(kubectl, path)
    done = kubectl.run("apply", "--server-side", "--dry-run=server", "-f", str(path), check=False)
    assert done.returncode != 0, f"{path.name} was accepted but must be rejected"
    assert expected in done.stderr, f"expected {expected!r} in:\n{done.stderr}"


def _example_of(crd: dict[str, Any]) -> dict[str, Any] | None:
    kind, group = crd["spec"]["names"]["kind"], crd["spec"]["group"]
    for path in VALID_EXAMPLES:
        for doc in _docs(path):
            if doc.get("kind") == kind and str(doc.get("apiVersion", "")).startswith(group + "/"):
                return doc
    return None


@pytest.mark.parametrize("crd", _crd_params())
def test_get_shows_printer_columns(
    kubectl: Kubectl, installed_crds: Any, namespace: str, crd: dict[str, Any]
) -> None:
    version = next(v for v in crd["spec"]["versions"] if v.get("storage"))
    columns = [c["name"] for c in version.get("additionalPrinterColumns", [])]
    if not columns:
        pytest.skip(f"{crd['metadata']['name']} defines no printer columns")
    example = _example_of(crd)
    if example is None:
        pytest.skip(f"no example of {crd['spec']['names']['kind']} to list")
    # kubectl prints no header for an empty list, so create one object.
    obj = {**example, "metadata": {"name": f"columns-{uuid.uuid4().hex[:6]}"}}
    namespaced = crd["spec"]["scope"] == "Namespaced"
    scope = ["-n", namespace] if namespaced else []
    kubectl.apply(obj, *scope)
    try:
        resource = f"{crd['spec']['names']['plural']}.{crd['spec']['group']}"
        header = kubectl.run("get", resource, *scope, "-o", "wide").stdout.splitlines()[0]
        for column in columns:
            assert column.upper() in header, f"column {column!r} missing from: {header}"
    finally:
        kubectl.run("delete", resource, obj["metadata"]["name"], *scope, "--ignore-not-found")


def _words(text: str) -> str:
    return " ".join(text.split())


@pytest.mark.parametrize("crd", _crd_params())
def test_explain_shows_spec_field_descriptions(
    kubectl: Kubectl, installed_crds: Any, crd: dict[str, Any]
) -> None:
    version = next(v for v in crd["spec"]["versions"] if v.get("storage"))
    spec = version["schema"]["openAPIV3Schema"]["properties"].get("spec")
    if spec is None:
        pytest.skip(f"{crd['metadata']['name']} has no spec")
    resource = f"{crd['spec']['names']['plural']}.spec"
    explained = _words(
        kubectl.run(
            "explain", resource, f"--api-version={crd['spec']['group']}/{version['name']}"
        ).stdout
    )
    assert spec.get("description"), f"{resource} has no description in the CRD"
    # kubectl re-wraps text; compare with whitespace collapsed.
    assert _words(spec["description"])[:60] in explained
    for field, schema in spec.get("properties", {}).items():
        assert field in explained, f"{resource}.{field} missing from kubectl explain"
        description = schema.get("description")
        assert description, f"{resource}.{field} has no description"
        assert _words(description)[:40] in explained, f"{resource}.{field}: description not shown"
