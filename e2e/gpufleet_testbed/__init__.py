"""Local Kubernetes control plane, kwok GPU nodes and Prometheus for e2e tests."""

from gpufleet_testbed.exporter_client import ExporterClient
from gpufleet_testbed.nodes import GpuNode, Taint, create_gpu_node, delete_node
from gpufleet_testbed.testbed import Testbed, down, status, up

__all__ = [
    "ExporterClient",
    "GpuNode",
    "Taint",
    "Testbed",
    "create_gpu_node",
    "delete_node",
    "down",
    "status",
    "up",
]
