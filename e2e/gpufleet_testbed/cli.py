"""python -m gpufleet_testbed up|down|status|env|node [--name NAME]."""

from __future__ import annotations

import argparse
import json
import shlex
import sys

from gpufleet_testbed import testbed
from gpufleet_testbed.layout import DEFAULT_NAME
from gpufleet_testbed.nodes import GpuNode, Taint, create_gpu_node


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m gpufleet_testbed", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    def command(name: str, help_text: str) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, help=help_text)
        sub.add_argument(
            "--name", default=DEFAULT_NAME, help="test bed name (default: %(default)s)"
        )
        return sub

    up = command("up", "start a test bed (idempotent) and print its env")
    up.add_argument("--no-metrics", action="store_true", help="skip the exporter and Prometheus")
    up.add_argument(
        "--gpu-nodes", type=int, default=1, help="fake GPU nodes to create (default: %(default)s)"
    )
    up.add_argument("--gpus-per-node", type=int, default=8)
    up.add_argument("--timeout", type=float, default=120.0, help="seconds per readiness wait")
    up.add_argument(
        "--no-build", action="store_true", help="fail instead of building missing binaries"
    )
    command("down", "stop every process of a test bed")
    command("status", "print the state of a test bed as JSON")
    command("env", "print `export` lines for a running test bed")
    node = command("node", "create a fake GPU node")
    node.add_argument("node_name")
    node.add_argument("--gpus", type=int, default=8)
    node.add_argument("--label", action="append", default=[], metavar="KEY=VALUE")
    node.add_argument(
        "--taint",
        action="append",
        default=None,
        metavar="KEY[=VALUE]:EFFECT",
        help="replaces the default nvidia.com/gpu taint; repeatable; 'none' for no taint",
    )
    return parser


def _taint(text: str) -> Taint:
    key_value, _, effect = text.partition(":")
    key, _, value = key_value.partition("=")
    return Taint(key, value, effect or "NoSchedule")


def _print_env(env: dict[str, str]) -> None:
    for key, value in env.items():
        print(f"export {key}={shlex.quote(value)}")


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "up":
        bed = testbed.up(
            args.name,
            metrics=not args.no_metrics,
            gpu_nodes=args.gpu_nodes,
            gpus_per_node=args.gpus_per_node,
            timeout=args.timeout,
            build=not args.no_build,
        )
        _print_env(bed.env())
    elif args.command == "down":
        testbed.down(args.name)
    elif args.command == "status":
        state = testbed.status(args.name)
        print(json.dumps(state, indent=2))
        return 0 if state["up"] else 1
    elif args.command == "env":
        _print_env(testbed.get(args.name).env())
    elif args.command == "node":
        taints = (
            ()
            if args.taint == ["none"]
            else tuple(_taint(t) for t in args.taint)
            if args.taint
            else None
        )
        labels = dict(label.split("=", 1) for label in args.label)
        spec = GpuNode(args.node_name, gpus=args.gpus, labels=labels)
        if taints is not None:
            spec = GpuNode(args.node_name, gpus=args.gpus, labels=labels, taints=taints)
        create_gpu_node(testbed.get(args.name).kubectl(), spec)
        print(f"node/{args.node_name} Ready", file=sys.stderr)
    return 0
