"""Public names resolved on first use (PEP 562 ``__getattr__``): a package lists which module
defines each name, and importing the package imports none of them. ``import tokenflow`` stays
light this way, and ``tokenflow.models`` gives ``ModelError`` without torch."""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from typing import Any


def resolve(namespace: dict[str, Any], name: str, exports: Mapping[str, str],
            modules: Mapping[str, str] | None = None) -> Any:
    """The public ``name`` of the package whose globals are ``namespace``: the attribute of that
    name of the module ``exports[name]``, or the module ``modules[name]``; kept in ``namespace``
    so that it is resolved once. :class:`AttributeError` for any other name."""
    if name in exports:
        value = getattr(importlib.import_module(exports[name]), name)
    elif modules and name in modules:
        value = importlib.import_module(modules[name])
    else:
        raise AttributeError(f"module {namespace['__name__']!r} has no attribute {name!r}")
    namespace[name] = value
    return value
