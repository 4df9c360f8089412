"""The example manifests: valid ones pass the models and the CRD schema, invalid ones fail
both with the error their `# expect-error:` line names."""

from __future__ import annotations

from typing import Any

import pytest

from .manifests import (
    PARSERS,
    InvalidCase,
    cel_messages,
    invalid_cases,
    parse_object,
    schema_errors,
    valid_objects,
)

VALID = valid_objects()
INVALID = invalid_cases()
NOT_CEL = [c for c in INVALID if c.rule != "cel"]
CEL = [c for c in INVALID if c.rule == "cel"]


def _ids(cases: list[InvalidCase]) -> list[str]:
    return [c.path.stem for c in cases]


@pytest.mark.parametrize(("name", "obj"), VALID, ids=[n for n, _ in VALID])
def test_valid_example_parses(name: str, obj: dict[str, Any]) -> None:
    parsed = parse_object(obj)

    assert parsed.errors == ()


@pytest.mark.parametrize(("name", "obj"), VALID, ids=[n for n, _ in VALID])
def test_valid_example_passes_crd_schema(name: str, obj: dict[str, Any]) -> None:
    assert schema_errors(obj) == []


@pytest.mark.parametrize(("name", "obj"), VALID, ids=[n for n, _ in VALID])
def test_parsed_example_round_trips_through_crd_schema(name: str, obj: dict[str, Any]) -> None:
    parsed = PARSERS[obj["kind"]](obj["spec"])
    assert parsed.value is not None
    spec = parsed.value.model_dump(by_alias=True, mode="json", exclude_none=True)

    assert schema_errors({**obj, "spec": spec}) == []
    assert PARSERS[obj["kind"]](spec).value == parsed.value


@pytest.mark.parametrize("case", INVALID, ids=_ids(INVALID))
def test_invalid_example_fails_to_parse_with_expected_error(case: InvalidCase) -> None:
    parsed = parse_object(case.obj)

    assert parsed.value is None
    assert any(case.expect in str(e) for e in parsed.errors), parsed.errors


@pytest.mark.parametrize("case", NOT_CEL, ids=_ids(NOT_CEL))
def test_invalid_example_fails_crd_schema_with_expected_error(case: InvalidCase) -> None:
    errors = schema_errors(case.obj)

    assert any(case.expect in e for e in errors), errors


@pytest.mark.parametrize("case", CEL, ids=_ids(CEL))
def test_cel_example_passes_crd_schema_so_only_its_rule_rejects_it(case: InvalidCase) -> None:
    # The rule itself runs on a real API server in tests/e2e.
    assert schema_errors(case.obj) == []


@pytest.mark.parametrize("case", CEL, ids=_ids(CEL))
def test_cel_example_expects_a_rule_message(case: InvalidCase) -> None:
    assert any(case.expect in m for m in cel_messages(case.obj["kind"]))


def test_invalid_examples_cover_every_kind_and_every_rule() -> None:
    assert {c.obj["kind"] for c in INVALID} == set(PARSERS)
    assert {c.rule for c in INVALID} == {"cel", "schema", "list-type"}
    assert len(INVALID) >= 10
