"""``python -m flowprobe``: same as the ``flowprobe`` command."""

import sys

from flowprobe.probe.cli import main

if __name__ == "__main__":
    sys.exit(main())
