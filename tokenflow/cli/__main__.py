"""``python -m tokenflow.cli``: the ``tf`` command."""

from tokenflow.cli import main

main()
