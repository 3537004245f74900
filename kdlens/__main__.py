"""``python -m kdlens``: Ctrl-C handling first, then the command line."""

import sys

from kdlens._internal import interrupt

try:
    interrupt.install()
    from kdlens.cli import main
except KeyboardInterrupt:  # Ctrl-C while the command modules import
    print("interrupted", file=sys.stderr)
    sys.exit(interrupt.EXIT_INTERRUPTED)

main()
