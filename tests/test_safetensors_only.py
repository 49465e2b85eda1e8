"""A checkpoint folder holding pickled ``.bin`` weights next to its safetensors loads the
safetensors only: the pickles are traps that would either fail loudly (garbage) or load other
weights (a valid pickle of shifted weights), and every unpickling entry point is spied on."""

from __future__ import annotations

import pickle
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tokenflow.models import load_model

#: (folder, pickle file name, safetensors file name) of every component with weights.
COMPONENTS = (("unet", "diffusion_pytorch_model.bin", "diffusion_pytorch_model.safetensors"),
              ("vae", "diffusion_pytorch_model.bin", "diffusion_pytorch_model.safetensors"),
              ("text_encoder", "pytorch_model.bin", "model.safetensors"))


def _plant(folder: Path, trap: str) -> None:
    for sub, pickled, safe in COMPONENTS:
        target = folder / sub / pickled
        if trap == "garbage":  # a pickle protocol header, then nothing loadable
            target.write_bytes(b"\x80\x04\x95" + b"\xffnot a checkpoint" * 64)
        else:  # a real pickle of other weights: reading it would change the model quietly
            shifted = {k: v + 1.0 if v.is_floating_point() else v
                       for k, v in load_file(folder / sub / safe).items()}
            torch.save(shifted, target)


def _load(path: Path, memo: Path):
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TOKENFLOW_HASH_CACHE", str(memo))
        return load_model(str(path), device="cpu", dtype=torch.float32)


@pytest.mark.parametrize("trap", ["garbage", "shifted"])
def test_pickled_weights_beside_safetensors_are_never_read(trap: str, tf_tiny_model_dir: Path,
                                                          tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    folder = Path(shutil.copytree(tf_tiny_model_dir, tmp_path / "model"))
    _plant(folder, trap)

    unpickled: list[str] = []

    def spy(name: str, real):
        def wrapper(*args, **kwargs):
            unpickled.append(f"{name}({args[0] if args else ''!s:.80})")
            return real(*args, **kwargs)
        return wrapper

    monkeypatch.setattr(torch, "load", spy("torch.load", torch.load))
    monkeypatch.setattr(torch.serialization, "load", spy("torch.serialization.load",
                                                         torch.serialization.load))
    monkeypatch.setattr(pickle, "load", spy("pickle.load", pickle.load))
    monkeypatch.setattr(pickle, "loads", spy("pickle.loads", pickle.loads))
    trapped = _load(folder, tmp_path / "memo")
    monkeypatch.undo()

    assert unpickled == []
    for sub, pickled, safe in COMPONENTS:
        assert (folder / sub / pickled).is_file()  # still there: ignored, not removed
        # every weight is the safetensors file's, bit for bit
        want = load_file(folder / sub / safe)
        got = getattr(trapped, sub).state_dict()
        params = {name for name, _ in getattr(trapped, sub).named_parameters()}
        assert params <= set(want) <= set(got), sub
        for key, value in want.items():
            assert torch.equal(got[key], value.to(got[key].dtype)), f"{sub}.{key}"
    clean = _load(Path(tf_tiny_model_dir), tmp_path / "memo")
    assert trapped.key == clean.key  # the pickles are not inputs of the model
    prompts = ["a blue ball", ""]
    assert torch.equal(trapped.encode_prompts(prompts), clean.encode_prompts(prompts))
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(1, 4, 8, 8, generator=gen)
    text = clean.encode_prompts(["a blue ball"])
    with torch.no_grad():
        assert torch.equal(trapped.unet(x, 500, encoder_hidden_states=text).sample,
                           clean.unet(x, 500, encoder_hidden_states=text).sample)
