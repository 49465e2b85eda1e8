"""The ``tf`` command line: one module per command group, arguments and printing only.

:mod:`~tokenflow.cli.edit` (``run``, ``invert``, ``compare``), :mod:`~tokenflow.cli.evaluate`
(``eval``), :mod:`~tokenflow.cli.plugins` (``plugins``, ``stages``, ``install``, ``uninstall``),
:mod:`~tokenflow.cli.cache` (``cache ls|rm|verify``); the work is :mod:`tokenflow.api`'s.
"""

from tokenflow.cli import cache, edit, evaluate, plugins  # noqa: F401  (they register commands)
from tokenflow.cli.app import cli, main

__all__ = ["cli", "main"]
