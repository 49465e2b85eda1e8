"""The video and the model an edit works on: :func:`prepare` reads and resizes the video, loads
the model and checks that the frames fit in memory (cheap checks first), giving a
:class:`Source`; :func:`described` stands in a model described from its files for a dry run."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from tokenflow.preflight import EditError, check_memory, say

Log = Callable[[str], None]


@dataclass
class Source:
    """A video ready to edit: the model, the decoded clip and ``frames``, what the UNet sees: the
    frames at the working size, padded by ``framing`` (a :class:`tokenflow.sizes.Framing`;
    None: not padded) to what the UNet needs."""

    model: Any
    clip: Any
    frames: np.ndarray
    framing: Any = None

    @property
    def working(self) -> np.ndarray:
        """The source frames at the working size (the padding cropped off; a view)."""
        return self.crop(self.frames)

    def crop(self, frames: np.ndarray) -> np.ndarray:
        """Frames of what the UNet sees (e.g. the decoded edit) at the working size."""
        return frames if self.framing is None else self.framing.crop(frames)


def quiet_libraries() -> None:
    """tokenflow shows its own progress; silence the libraries' bars and info chatter."""
    import diffusers
    import transformers

    for lib in (diffusers, transformers):
        lib.utils.logging.disable_progress_bar()
        lib.utils.logging.set_verbosity_error()


def prepare(video, *, model=None, revision: str | None = None, device=None, dtype=None,
            frames: int | None = None, stride: int = 1, size=None,
            log: Log | None = None) -> Source:
    """Read ``video`` (a path, or a :class:`tokenflow.video.Video`), load ``model`` (None for
    the embedded model, a directory or hub id, or a loaded :class:`tokenflow.models.Model`) and
    resize the frames to the working size (``size``: short side, ``(width, height)`` or
    ``"WxH"``; default the model's native size; the short side's aspect is kept to the pixel),
    then pad them to the multiples the UNet needs (``Model.size_multiple``; cropped again after
    decoding). Cheap checks come first: the size and the video are read before the (slow) model
    is loaded. Notes go to ``log``."""
    from tokenflow.models import Model, ModelError, load_model, parse_dtype
    from tokenflow.sizes import Framing, aspect_note, parse_size, working_size
    from tokenflow.video import Video, VideoError, read_video, resize_frames

    try:
        requested = parse_size(size) if isinstance(size, str) else size
    except VideoError as exc:
        raise EditError(f"--size: {exc}", usage=True) from exc
    try:
        clip = video if isinstance(video, Video) else read_video(video, frames=frames, stride=stride)
    except VideoError as exc:
        raise EditError(str(exc)) from exc
    quiet_libraries()
    if isinstance(model, Model):
        loaded = model
    else:
        try:
            torch_dtype = parse_dtype(dtype) if isinstance(dtype, str) else dtype
            loaded = load_model(model, device=device, dtype=torch_dtype, revision=revision)
        except ModelError as exc:
            raise EditError(str(exc)) from exc
        say(log, f"note: no --model given; using {loaded.label}" if model is None
             else f"model: {loaded.label}")
    try:
        height, width = working_size(clip.frames.shape[1], clip.frames.shape[2], requested,
                                     native=loaded.native_size)
        framing = Framing.around(height, width, loaded.size_multiple)
    except VideoError as exc:
        raise EditError(str(exc)) from exc
    check_memory(loaded, len(clip), framing.canvas_height, framing.canvas_width, size)
    resized = framing.pad(resize_frames(clip.frames, height, width))
    for note in clip.notes:
        say(log, f"note: {note}")
    if frames is not None and len(clip) < frames:
        say(log, f"note: --frames {frames} asked for more frames than the video has; "
                  f"using all {len(clip)}")
    if len(clip) == 1:
        say(log, "note: the video has 1 frame: nothing to propagate, so this is a plain edit "
                  "of one image")
    stretch = aspect_note(clip.frames.shape[1:3], (height, width))
    if stretch:
        say(log, f"note: --size {width}x{height} changes the source's {stretch}")
    padding = framing.note(loaded.size_multiple)
    if padding:
        say(log, f"note: working size {width}x{height}: {padding}")
    say(log, f"video: {len(clip)} frames at {clip.fps:g} fps, "
              f"{clip.frames.shape[2]}x{clip.frames.shape[1]} -> {width}x{height}")
    return Source(model=loaded, clip=clip, frames=resized, framing=framing)


def described(model=None, *, revision: str | None = None, device=None, dtype=None):
    """``model`` described from its files without loading its weights
    (:func:`tokenflow.models.describe_model`), for a plan; a loaded model is returned as it is."""
    from tokenflow.models import Model, ModelError, describe_model

    if isinstance(model, Model):
        return model
    quiet_libraries()
    try:
        return describe_model(model, device=device, dtype=dtype, revision=revision)
    except ModelError as exc:
        raise EditError(str(exc)) from exc


