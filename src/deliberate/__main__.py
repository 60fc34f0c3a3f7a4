"""``python -m deliberate`` is the ``deliberate`` command."""

from deliberate.cli import main

main()
