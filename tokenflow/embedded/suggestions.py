"""What the exported embedded model's ``tokenflow.json`` says besides its weights: the stage
parameters it suggests and the words it knows (``python -m tokenflow.embedded.train export``
writes them; tests check that the shipped file matches)."""

from __future__ import annotations

from tokenflow.embedded.world2 import WORDS

#: The words of the world's captions, declared in the exported ``tokenflow.json`` so that a run
#: names the prompt words the model cannot use (``tokenflow.models.vocabulary``). Measured on the
#: example clips (``benchmarks/defaults_sweep.py``, docs/benchmarks.md): edits take the new
#: colour and background and keep the layout, but whatever texture the prompt names, the edited
#: object shows the same rough check pattern, which the rules read as "checkered"; stripes, dots
#: and rings are never drawn.
_PATTERN = ("this model's edits draw one rough check pattern for every texture word; stripes, "
            "dots and rings do not show")
EMBEDDED_VOCABULARY = {
    "words": list(WORDS),
    "lost_in_edits": {"striped": _PATTERN, "dotted": _PATTERN, "ringed": _PATTERN},
    "not_added_by_edits": {},
}


#: Stage parameters the exported model suggests (its ``tokenflow.json``; any checkpoint may carry
#: one), chosen by ``benchmarks/defaults_sweep.py`` (docs/benchmarks.md). It was trained with ""
#: as the unconditional caption and does not know SD's negative-prompt words. Its UNet has three
#: levels (12, 6 and 3 latent cells at 96 pixels): SD's ``up_blocks.1.resnets.1`` works at a
#: quarter of the latent grid, here 3x3 or 6x6, too coarse to hold an object's outline (mask IoU
#: 0.36-0.63 against the source on ``rolling_ball``); the finest level, 12x12, holds it (IoU
#: 0.88-0.92) with the released injection times, which leave each frame enough freedom for
#: TokenFlow's propagation to matter.
EMBEDDED_DEFAULTS = {
    # the fewest inversion steps within 0.5 dB of 500 on the first model's clips
    # (benchmarks/inversion_steps.py); not measured again on this model
    "inversion.inversion_steps": 100,
    # the feature store keeps what the PnP defaults below inject, so every editor shares one
    "features.conv_layers": ["up_blocks.2.resnets.0"],
    "features.conv_t": 0.8,
    "editor.negative_prompt": "",
    "editor.guidance_scale": 5.0,
    "editor.conv_layers": ["up_blocks.2.resnets.0"],
    "editor.pnp_attn_t": 0.5,
    "editor.pnp_f_t": 0.8,
    # the canny ControlNet trained for this model (``train controlnet``), shipped beside it
    "editor.controlnet": "controlnet-canny",
}
