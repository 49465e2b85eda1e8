"""The source branch: the UNet on the inverted latents with the inversion prompt.

One pass at an editing timestep records every self-attention layer's input tokens (the block's
norm1 output, what correspondences and PnP's query/key injection read) and the residual branch of
the given ResNets. The feature store runs it for every frame and timestep; when a feature store
keeps no tokens (``store_tokens=False``), readers run it again on demand.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import zarr

from tokenflow.editing.attention import AttentionState, tokenflow_attention
from tokenflow.cache.layouts import read_timesteps


class SourcePass:
    """Runs the source branch for chosen frames at a step index of the editing grid."""

    def __init__(self, model, inversion: zarr.Group, conv_layers: Sequence[str] = ()) -> None:
        self.model = model
        self.latents = inversion["latents"]
        self.timesteps = read_timesteps(inversion)
        self.prompt = str(inversion.attrs.get("prompt", ""))
        self.conv_layers = tuple(conv_layers)
        self.frame_evals = 0
        self._text: torch.Tensor | None = None
        self._memo: tuple[tuple[int, tuple[int, ...], bool], tuple[dict, dict]] | None = None

    @property
    def text(self) -> torch.Tensor:
        if self._text is None:
            self._text = self.model.encode_prompts([self.prompt])
        return self._text

    def run(self, step: int, frames: Sequence[int], *, conv: bool = True
            ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        """``(tokens, residuals)``: {layer: (F, S, C)} and {resnet: (F, C, h, w)} on the model's
        device. The last result is memoised, so reading layer after layer costs one pass."""
        key = (int(step), tuple(int(f) for f in frames), conv)
        if self._memo is not None and self._memo[0] == key:
            return self._memo[1]
        model = self.model
        x = np.asarray(self.latents.get_orthogonal_selection((key[0], np.asarray(key[1]))))
        x = torch.from_numpy(x).to(model.device, model.dtype)
        emb = self.text.expand(x.shape[0], -1, -1)
        state = AttentionState()
        with torch.no_grad(), tokenflow_attention(
            model.unet, state, self.conv_layers if conv else ()
        ):
            tokens: dict[str, torch.Tensor] = {}
            residuals: dict[str, torch.Tensor] = {}
            state.record, state.record_conv = tokens, residuals
            model.unet(x, self.timesteps[key[0]], encoder_hidden_states=emb, return_dict=False)
        self.frame_evals += x.shape[0]
        self._memo = (key, (tokens, residuals))
        return tokens, residuals
