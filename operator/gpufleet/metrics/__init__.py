"""Prometheus in (queue depth, power) and out (the operator's own metrics)."""
