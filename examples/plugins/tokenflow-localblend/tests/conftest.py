"""Fixtures of this package's tests. The ``tf_*`` fixtures come from tokenflow's pytest plugin
(``tokenflow.testing``, loaded through its ``pytest11`` entry point wherever tokenflow is
installed)."""

from __future__ import annotations

import pytest
import tokenflow_localblend.editor

PLUGIN_NAME = "tokenflow_localblend.editor"


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "slow: runs the embedded model for more than a few seconds")


@pytest.fixture
def pm(tf_plugin_manager, tf_register):
    """A plugin manager with the ``localblend`` editor: loaded from the entry point when this
    package is installed, registered for the test when it is only on ``sys.path``."""
    if not tf_plugin_manager.is_registered(tokenflow_localblend.editor):
        tf_register(tokenflow_localblend.editor, name=PLUGIN_NAME)
    assert tf_plugin_manager.get_plugin(PLUGIN_NAME) is tokenflow_localblend.editor
    return tf_plugin_manager
