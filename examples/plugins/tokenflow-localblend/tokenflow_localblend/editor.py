"""Editor ``localblend``: PnP that edits only where chosen words of the prompt are, keeping the
source everywhere else (a "local blend" in the manner of prompt-to-prompt).

Every UNet call the editor makes (the keyframes in ``edit_step``, every chunk of frames in
``predict``, which the tokenflow blender calls for all frames) passes through a probe on the
cross-attention layers (``attn2``) named by ``mask_from``. A probe leaves its layer's output
alone and, for the conditional branch only, computes the softmax attention of every spatial
token to the target prompt's tokens, sums the probabilities of the chosen words' tokens,
averages over heads and upsamples the map to the latent grid. A frame's map for a step is the
mean over the probed layers and over its UNet calls in that step.

After the blender's DDIM step at grid index ``i`` (``finish_step``), each frame's map is
rescaled to [0, 1] between its minimum and maximum, thresholded into a mask ``m`` (optionally
dilated), and the next latents become ``m * edited + (1 - m) * source``, where ``source`` is the
inverted source at the level the step reached: the inversion store's ``latents[i + 1]`` (index
``j`` holds timestep ``timesteps[j]``), or the clean latents ``x0`` after the last step.
"""

from __future__ import annotations

import string
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from tokenflow import (
    FRAME,
    INVERSION,
    LATENT_X,
    LATENT_Y,
    TIMESTEP,
    EditRun,
    EditStep,
    EditorOutput,
    Injection,
    KeyframeEditor,
    PnPParams,
    StageError,
    create_array,
    hookimpl,
    token_grid,
)

#: PnP's UNet calls are branch-major [uncond frames..., cond frames...]; the target prompt's
#: branch is the second.
N_BRANCHES = 2
COND_BRANCH = 1
#: Cross-attention layers whose maps make the mask, by default: the decoder's two finest
#: resolutions of an SD-shaped UNet. On the embedded model the encoder's and the coarser
#: layers' maps hardly depend on where the object is (see the README).
MASK_FROM = ("up_blocks.2.", "up_blocks.3.")


@dataclass(frozen=True)
class LocalBlendParams(PnPParams):
    """PnP's parameters, plus: ``words``: words (or phrases) of the prompt whose region is
    edited; ``threshold``: a latent cell is edited where the words' map reaches this fraction of
    the way from the frame's minimum to its maximum (0 edits everywhere, above 1 nowhere);
    ``dilate``: grow the mask by this many latent cells; ``mask_from``: module-path prefixes of
    the cross-attention layers whose maps are averaged."""

    words: tuple[str, ...] = ()
    threshold: float = 0.5
    dilate: int = 1
    mask_from: tuple[str, ...] = MASK_FROM

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.threshold < 0:
            raise ValueError("threshold must be at least 0")
        if self.dilate < 0:
            raise ValueError("dilate must be at least 0")
        if not self.mask_from:
            raise ValueError("mask_from needs at least one layer prefix")


def _normal(word: str) -> str:
    return word.strip(string.punctuation).lower()


def word_positions(tokenizer, prompt: str, words: tuple[str, ...]) -> dict[str, list[int]]:
    """Positions, in ``prompt`` as the text encoder sees it (start token at 0, truncated to the
    tokenizer's length), of the tokens of each entry of ``words``.

    An entry is one word or several (a phrase); a word may be several BPE tokens. Entries match
    whole words of the prompt, ignoring case and surrounding punctuation; an entry that is not
    in the prompt (or only in its truncated tail) maps to ``[]``.
    """
    ids = tokenizer(prompt, truncation=True, max_length=tokenizer.model_max_length).input_ids
    first = 1 if ids and ids[0] == tokenizer.bos_token_id else 0
    last = len(ids) - (1 if ids and ids[-1] == tokenizer.eos_token_id else 0)

    def count(text: str) -> int:
        return len(tokenizer(text, add_special_tokens=False).input_ids) if text else 0

    spans: list[tuple[str, range]] = []  # (word, its tokens without surrounding punctuation)
    pieces: list[int] = []
    for raw in prompt.split():
        tokens = tokenizer(raw, add_special_tokens=False).input_ids
        core = raw.strip(string.punctuation)
        lead = raw[:raw.index(core)] if core else raw
        start = first + len(pieces)
        skip, n = count(lead), count(core)
        if skip + n + count(raw[len(lead) + len(core):]) != len(tokens):
            skip, n = 0, len(tokens)  # punctuation merged into the word's tokens: take them all
        spans.append((_normal(raw), range(start + skip, start + skip + n)))
        pieces += tokens
    if pieces[:last - first] != ids[first:last]:
        raise StageError("localblend: this tokenizer does not split the prompt word by word; "
                         "cannot place the chosen words in it")
    found: dict[str, list[int]] = {}
    for entry in words:
        wanted = [_normal(w) for w in entry.split()]
        hits: set[int] = set()
        for i in range(len(spans) - len(wanted) + 1):
            if wanted and [w for w, _ in spans[i:i + len(wanted)]] == wanted:
                hits.update(p for _, r in spans[i:i + len(wanted)] for p in r if p < last)
        found[entry] = sorted(hits)
    return found


@dataclass
class WordMaps:
    """The chosen tokens' attention maps of one step, shared by every probe of one run.

    ``frames`` is set only around the editor's own UNet calls, so other UNet calls (a feature
    store recomputing source tokens, say) record nothing; ``total`` and ``count`` add up the
    maps per frame.
    """

    tokens: torch.Tensor
    latent_hw: tuple[int, int]
    n_frames: int
    frames: list[int] | None = None
    total: torch.Tensor = field(init=False)
    count: torch.Tensor = field(init=False)

    def __post_init__(self) -> None:
        self.clear()

    def clear(self) -> None:
        self.total = torch.zeros(self.n_frames, *self.latent_hw)
        self.count = torch.zeros(self.n_frames)

    def add(self, layer: str, maps: torch.Tensor) -> None:
        """Add one layer's maps ``(F, h, w)`` (latent size) for the current ``frames``."""
        index = torch.as_tensor(self.frames)
        self.total[index] += maps.to(self.total)
        self.count[index] += 1

    def mean(self) -> torch.Tensor:
        """(N, h, w): each frame's mean map."""
        missing = (self.count == 0).nonzero().flatten().tolist()
        if missing:
            raise StageError(f"localblend: no attention maps for frames {missing[:8]} this step; "
                             "the blender must call the editor's predict for every frame")
        return self.total / self.count[:, None, None]


class CrossAttentionProbe:
    """Wraps a cross-attention layer's processor. Its output is the wrapped processor's,
    untouched; while the shared :class:`WordMaps` records, the conditional branch's attention
    to the chosen tokens is added to it."""

    def __init__(self, layer: str, inner, maps: WordMaps) -> None:
        self.layer = layer
        self.inner = inner
        self.maps = maps

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None,
                 temb=None, *args, **kwargs) -> torch.Tensor:
        out = self.inner(attn, hidden_states, encoder_hidden_states, attention_mask, temb,
                         *args, **kwargs)
        maps = self.maps
        if maps.frames is None:
            return out
        if encoder_hidden_states is None or hidden_states.ndim != 3:
            raise RuntimeError(f"{self.layer}: expected cross-attention on (batch, tokens, "
                               "channels)")
        frames = len(maps.frames)
        if hidden_states.shape[0] != N_BRANCHES * frames:
            raise RuntimeError(f"{self.layer}: batch {hidden_states.shape[0]} is not "
                               f"{N_BRANCHES} branches of {frames} frames")
        cond = slice(COND_BRANCH * frames, (COND_BRANCH + 1) * frames)
        grid = token_grid(hidden_states.shape[1], maps.latent_hw)
        maps.add(self.layer, word_attention(attn, hidden_states[cond], encoder_hidden_states[cond],
                                            maps.tokens, grid, maps.latent_hw))
        return out


def word_attention(attn, x: torch.Tensor, context: torch.Tensor, tokens: torch.Tensor,
                   grid: tuple[int, int], latent_hw: tuple[int, int]) -> torch.Tensor:
    """Attention probability of every spatial token of ``x`` (F, S, C) to ``tokens`` of
    ``context`` (F, T, D), summed over those tokens and averaged over heads: (F, h, w) maps
    upsampled from ``grid`` to ``latent_hw``, float32 on the CPU."""
    if attn.norm_cross:
        context = attn.norm_encoder_hidden_states(context)
    query, key = attn.to_q(x), attn.to_k(context)
    f, heads = x.shape[0], attn.heads
    dim = key.shape[-1] // heads
    query = query.view(f, -1, heads, dim).transpose(1, 2)
    key = key.view(f, -1, heads, dim).transpose(1, 2)
    if attn.norm_q is not None:
        query = attn.norm_q(query)
    if attn.norm_k is not None:
        key = attn.norm_k(key)
    # the scale of scaled_dot_product_attention, which diffusers' default processor uses
    scores = query.float() @ key.float().transpose(-1, -2) * dim ** -0.5
    chosen = scores.softmax(-1)[..., tokens.to(scores.device)].sum(-1).mean(1)  # (F, S)
    chosen = chosen.view(f, 1, *grid)
    if tuple(grid) != tuple(latent_hw):
        chosen = F.interpolate(chosen, size=latent_hw, mode="bilinear", align_corners=False)
    return chosen[:, 0].cpu()


def blend_mask(maps: torch.Tensor, threshold: float, dilate: int = 0) -> torch.Tensor:
    """(N, 1, h, w) mask of 0.0/1.0 from maps (N, h, w): each frame's map rescaled between its
    minimum and maximum, at least ``threshold``, grown by ``dilate`` cells."""
    flat = maps.flatten(1)
    low, high = flat.amin(1), flat.amax(1)
    span = (high - low).clamp_min(torch.finfo(maps.dtype).tiny)
    level = (maps - low[:, None, None]) / span[:, None, None]
    mask = (level >= threshold).to(torch.float32)[:, None]
    if dilate > 0:
        mask = F.max_pool2d(mask, 2 * dilate + 1, stride=1, padding=dilate)
    return mask


class LocalBlendEditor(KeyframeEditor):
    name = "localblend"
    version = 1
    Params = LocalBlendParams
    summary = "PnP only where -o editor.words attend (cross-attention mask); the source elsewhere"

    def key_inputs(self) -> dict:
        """tokenflow's keyframe editor runs inside this editor: a new version of it changes
        this editor's keys."""
        return {"pnp_version": KeyframeEditor.version}

    def upstream_params(self, config) -> dict:
        return self.params.feature_needs()

    def injection(self, steps: int) -> Injection:
        return Injection.pnp(self.params, steps)

    def check(self, model) -> dict[str, list[int]]:
        """Refuse the run when it is planned if the words are missing from the prompt; returns
        each word's token positions in the prompt."""
        params = self.params
        if not params.words:
            raise StageError("localblend needs the words to edit: -o editor.words WORD[,WORD...] "
                             "with words of the prompt")
        found = word_positions(model.tokenizer, params.prompt, params.words)
        missing = [w for w, positions in found.items() if not positions]
        if missing:
            raise StageError(f"localblend: {', '.join(map(repr, missing))} not among the words of "
                             f"the prompt {params.prompt!r}")
        return found

    def start(self, run: EditRun) -> dict:
        """PnP's state, plus the chosen tokens' maps, a probe on each ``mask_from``
        cross-attention layer (restored with every other processor when the loop ends) and the
        ``mask`` array of the editor's store."""
        params = self.params
        found = self.check(run.model)
        unet = run.model.unet
        cross = [name.removesuffix(".processor") for name in unet.attn_processors]
        cross = [p for p in cross
                 if p.endswith(".attn2") and unet.get_submodule(p).is_cross_attention]
        probed = {p for p in cross if p.startswith(params.mask_from)}
        if not probed:
            blocks = sorted({p.split(".attentions.")[0] for p in cross})
            raise StageError(f"localblend: mask_from {', '.join(params.mask_from)} matches none of "
                             f"the UNet's cross-attention layers (in {', '.join(blocks)})")
        state = super().start(run)
        tokens = torch.tensor(sorted({p for ps in found.values() for p in ps}))
        maps = WordMaps(tokens=tokens, latent_hw=tuple(run.x0.shape[-2:]), n_frames=run.n_frames)
        # set_attn_processor needs every processor and pops from the dict it is given: a fresh
        # full dict, with only the probed layers replaced
        processors = {}
        for name, proc in unet.attn_processors.items():
            path = name.removesuffix(".processor")
            processors[name] = CrossAttentionProbe(path, proc, maps) if path in probed else proc
        unet.set_attn_processor(processors)
        state.update(maps=maps, tokens=tokens.tolist(), probed=sorted(probed))
        if run.editor_out is not None:  # the masks, for inspection (dims named for xarray)
            h, w = run.x0.shape[-2:]
            state["mask_store"] = create_array(
                run.editor_out, "mask", dims=(TIMESTEP, FRAME, LATENT_Y, LATENT_X),
                shape=(len(run.timesteps), run.n_frames, h, w), dtype="uint8",
                chunks=(1, run.n_frames, h, w))
        return state

    @contextmanager
    def _recording(self, step: EditStep, frames: list[int]):
        maps: WordMaps = step.run.editor_state["maps"]
        maps.frames = list(frames)
        try:
            yield
        finally:
            maps.frames = None

    def edit_step(self, step: EditStep) -> EditorOutput:
        step.run.editor_state["maps"].clear()  # a new step: the maps of this one only
        with self._recording(step, step.keyframes):
            return super().edit_step(step)

    def predict(self, step: EditStep, frames: list[int], latents: torch.Tensor, *,
                provide=None) -> torch.Tensor:
        with self._recording(step, frames):
            return super().predict(step, frames, latents, provide=provide)

    def source_latents(self, run: EditRun, index: int) -> torch.Tensor:
        """The inverted source latents at grid index ``index``; ``x0`` past the last one."""
        if index >= len(run.timesteps):
            return run.x0
        stored = run.ctx.inputs[INVERSION]["latents"]
        return torch.from_numpy(np.asarray(stored[index], dtype=np.float32)).to(run.x0.device)

    def mask(self, run: EditRun) -> torch.Tensor:
        """(N, 1, h, w): this step's mask, 1 where a frame is edited, 0 where it keeps the
        source."""
        return blend_mask(run.editor_state["maps"].mean(), self.params.threshold,
                          self.params.dilate)

    def finish_step(self, step: EditStep, latents: torch.Tensor) -> torch.Tensor:
        """Keep the source outside the words' mask (see the module docs)."""
        run = step.run
        mask = self.mask(run).to(latents.device, latents.dtype)
        if "mask_store" in run.editor_state:
            run.editor_state["mask_store"][step.index] = (
                mask[:, 0].round().to(torch.uint8).cpu().numpy())
        source = self.source_latents(run, step.index + 1).to(latents.dtype)
        return mask * latents + (1 - mask) * source


@hookimpl
def register_editors(register):
    register(LocalBlendEditor)
