"""tokenflow-localblend: the ``localblend`` editor for tokenflow (see :mod:`.editor`)."""

__version__ = "0.1.0"
