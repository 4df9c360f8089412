"""Settings shared by every test directory."""

from hypothesis import settings

# Timing on shared CI machines is noisy; a slow example is not a failure.
settings.register_profile("gpufleet", deadline=None)
settings.load_profile("gpufleet")
