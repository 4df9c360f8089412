"""gpufleet: autoscale GPU inference fleets across clouds under power caps."""

__version__ = "0.1.0"
