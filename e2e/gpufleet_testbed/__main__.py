import sys

from gpufleet_testbed.cli import main

sys.exit(main())
