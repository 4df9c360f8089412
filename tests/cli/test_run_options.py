"""`gpufleet run` refuses a bad option before it starts anything."""

from __future__ import annotations

import pytest
import typer

from gpufleet.cli.run import _pod_selector


def test_a_pod_label_selector_is_taken_as_the_api_server_reads_it() -> None:
    assert _pod_selector(" gpufleet.io/serving=true ") == "gpufleet.io/serving=true"
    assert _pod_selector("tier in (a,b),!canary") == "tier in (a,b),!canary"
    assert _pod_selector("") is None


@pytest.mark.parametrize("text", ["==", "app=$(id)", ","])
def test_a_pod_label_selector_that_is_not_one_names_the_flag(text: str) -> None:
    with pytest.raises(typer.BadParameter, match="--pod-label-selector"):
        _pod_selector(text)
