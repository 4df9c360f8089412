"""Trace-driven fleet simulator: `gpufleet simulate` and benchmarks/fleet_traces.py."""
