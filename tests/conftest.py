"""Settings shared by every test directory."""

from hypothesis import settings

# Timing on shared CI machines is noisy; a slow example is not a failure.
settings.register_profile("gpufleet", deadline=None)
settings.load_profile("gpufleet")

# The test bed's fixtures, for tests/e2e and tests/security alike.
pytest_plugins = ("gpufleet_testbed.pytest_plugin",)
