"""``python -m kdlens``: Ctrl-C handling first, then the command line."""

from kdlens._internal import interrupt

try:
    interrupt.install()
    from kdlens.cli import main
except KeyboardInterrupt:  # Ctrl-C while the command modules import
    interrupt.exit_interrupted()

main()
