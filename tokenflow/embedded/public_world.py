"""``tokenflow.world``, the public module of the embedded model's world (v2): the scenes and
clips of :mod:`tokenflow.embedded.world2` and the rule-based checks of
:mod:`tokenflow.embedded.world2_checks`, in one namespace for scorers, example clips and tests.

    from tokenflow import world
    scene = world.Scene("wood", (world.Thing("ball", "red", "striped", period=0.7),))
    image, masks = world.render(scene, 96, 128)  # uint8 (96, 128, 3), bool (1, 96, 128)
    world.read_frame(image)  # background "wood"; one object: its mask, "red", "striped"
"""

from __future__ import annotations

from tokenflow.embedded import world2, world2_checks
from tokenflow.embedded.world2 import *  # noqa: F403 - exactly world2.__all__
from tokenflow.embedded.world2_checks import *  # noqa: F403 - exactly world2_checks.__all__

__all__ = [*world2.__all__, *world2_checks.__all__]
