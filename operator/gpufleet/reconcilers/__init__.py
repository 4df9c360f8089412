"""Kopf handlers and the fleet loop: the only place that does I/O and calls the planner."""
