"""``python -m kdlens``: Ctrl-C handling first, then the command line."""

import sys

from kdlens._internal import interrupt

interrupt.install()
try:
    from kdlens.cli import main
except KeyboardInterrupt:  # Ctrl-C while the command modules import
    sys.exit(interrupt.EXIT_INTERRUPTED)

main()
