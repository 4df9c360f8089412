"""What the fleet loop tells: status and conditions of the three kinds, Events, metrics,
and the gateway ConfigMap of sustainable rates."""
