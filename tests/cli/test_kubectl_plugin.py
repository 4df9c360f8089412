"""`kubectl gpufleet`: the plugin's own arguments and its shell completion (the commands
themselves are `gpufleet status|explain|simulate`, tested in test_inspect.py)."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from gpufleet.cli import inspect, kubectl

POOLS = ["chat/chat", "image-gen/image-gen", "image-gen/image-upscale"]


@pytest.mark.parametrize(
    ("words", "expected"),
    [
        ([""], ["status", "explain", "simulate"]),
        (["ex"], ["explain"]),
        (["explain", ""], POOLS),
        (["explain", "image-gen/image-u"], ["image-gen/image-upscale"]),
        (["--context", "prod", "explain", "chat"], ["chat/chat"]),
        (["status", ""], []),
    ],
)
def test_completion_offers_commands_then_pools(words: list[str], expected: list[str]) -> None:
    assert kubectl.candidates(words, POOLS) == expected


def test_explain_takes_kubectls_namespace_flag(monkeypatch: pytest.MonkeyPatch) -> None:
    asked: list[str] = []
    monkeypatch.setattr(inspect, "explain", asked.append)
    runner = CliRunner()

    ok = runner.invoke(kubectl.plugin, ["--context", "prod", "explain", "-n", "chat", "chat"])
    assert ok.exit_code == 0 and asked == ["chat/chat"]
    assert inspect.TARGET.context == "prod"

    bare = runner.invoke(kubectl.plugin, ["explain", "chat"])
    assert bare.exit_code != 0 and "NAMESPACE/NAME, or NAME with -n" in bare.output


def test_the_plugin_is_installed_under_kubectls_names() -> None:
    from importlib.metadata import entry_points

    scripts = {e.name: e.value for e in entry_points(group="console_scripts")}
    assert scripts["kubectl-gpufleet"] == "gpufleet.cli.kubectl:plugin"
    assert scripts["kubectl_complete-gpufleet"] == "gpufleet.cli.kubectl:complete"
