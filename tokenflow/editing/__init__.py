"""The editing machinery: the per-timestep loop, the attention processors, the source pass,
diffusion helpers, the shared keyframe editor and control extractors."""
