"""What the exported embedded model's ``tokenflow.json`` says besides its weights: the stage
parameters it suggests and the words it knows (``python -m tokenflow.embedded.train export``
writes them; tests check that the shipped file matches)."""

from __future__ import annotations

from tokenflow.embedded.world import WORDS

#: The words of the world's captions, declared in the exported ``tokenflow.json`` so that a run
#: names the prompt words the model cannot use (``tokenflow.models.vocabulary``). Seen on the
#: example clips (2026-11-30): edits keep an object's shape and take the new colour or background
#: but lose its stripes and dots; a checkered floor stays where the source has one and is never
#: drawn anew (issue 13 is the model that draws textures).
_TEXTURES = "this model's edits keep an object's shape and colour but lose its stripes and dots"
EMBEDDED_VOCABULARY = {
    "words": list(WORDS),
    "lost_in_edits": {"striped": _TEXTURES, "dotted": _TEXTURES},
    "not_added_by_edits": {"checkered": "this model keeps a checkered floor the source has but "
                                        "does not draw a new one"},
}


#: Stage parameters the exported model suggests (its ``tokenflow.json``; any checkpoint may carry
#: one). Measured on this model (docs/embedded-model.md): 50 inversion steps reconstruct well; it
#: was trained with "" as the unconditional caption and does not know SD's negative-prompt words;
#: at 64x64, ``up_blocks.1`` is 2x2, too coarse to carry the layout that SD's 16x16 carries at
#: 512x512, so the conv residual is injected at the two finer levels (4x4 and 8x8); its guidance
#: sweet spot is lower and its layout holds better with injection at every step.
EMBEDDED_DEFAULTS = {
    # the fewest inversion steps whose reconstruction stays within 0.5 dB of 500 steps on every
    # example clip (50 loses 1.27 dB on sky.mp4): benchmarks/inversion_steps.py
    "inversion.inversion_steps": 100,
    # the feature store keeps what the PnP defaults below inject, so every editor shares one
    "features.conv_layers": ["up_blocks.2.resnets.1", "up_blocks.3.resnets.0"],
    "features.conv_t": 1.0,
    "editor.negative_prompt": "",
    "editor.guidance_scale": 2.0,
    "editor.conv_layers": ["up_blocks.2.resnets.1", "up_blocks.3.resnets.0"],
    "editor.pnp_attn_t": 1.0,
    "editor.pnp_f_t": 1.0,
    # the canny ControlNet trained for this model (``train controlnet``), shipped beside it
    "editor.controlnet": "controlnet-canny",
}
