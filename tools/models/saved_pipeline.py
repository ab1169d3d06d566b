"""A pipeline saved with diffusers' ``save_pretrained``: its ``model_index.json`` and the components it
lists, loaded one at a time onto a device.

:class:`SavedPipeline` is what every pipeline family loads its parts through: the denoiser network, the
VAE, the tokenizer / text encoder pairs. It keeps the record the model's ``info`` reports: the class of each
text encoder and the parameter count of each network, in the order they loaded.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import NamedTuple

import torch
from torch import nn

from tools.common import one_line

from .base import ModelError, parameter_count
from .diffusers import read_json

__all__ = ["INDEX", "SavedPipeline", "SchedulerFile"]

INDEX = "model_index.json"

# standard weight file names: with none of them but a ``.fp16.`` file, the folder holds only the fp16 variant
_WEIGHT_FILES = ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin",
                 "diffusion_pytorch_model.safetensors.index.json", "diffusion_pytorch_model.bin.index.json",
                 "model.safetensors", "pytorch_model.bin", "model.safetensors.index.json",
                 "pytorch_model.bin.index.json")

# what a component's from_pretrained raises for a folder it cannot load (reported as one line)
_LOAD_ERRORS = (OSError, ValueError, RuntimeError, TypeError, KeyError, AttributeError, ImportError)


def _component_class(library: str, name: str, folder: Path):
    if library == "diffusers":
        import diffusers as module
    elif library == "transformers":
        import transformers as module
    else:
        raise ModelError(f"{folder}: library {library!r} is not supported (diffusers or transformers)")
    cls = getattr(module, name, None)
    if cls is None and library == "transformers" and name.endswith(("Tokenizer", "TokenizerFast")):
        cls = getattr(module, "AutoTokenizer", None)  # a tokenizer class this transformers spells differently
    if cls is None or not hasattr(cls, "from_pretrained"):
        raise ModelError(f"{folder}: this {library} has no {name} (upgrade {library}?)")
    return cls


def _variant(folder: Path) -> str | None:
    names = {p.name for p in folder.iterdir()}
    if names.intersection(_WEIGHT_FILES):
        return None
    return "fp16" if any(".fp16." in n for n in names) else None


@contextlib.contextmanager
def _quiet():
    """transformers' per-component "Loading weights" progress bars off while a component loads."""
    try:
        from transformers.utils import logging
    except ImportError:
        yield
        return
    was_on = logging.is_progress_bar_enabled()
    logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_on:
            logging.enable_progress_bar()


class SchedulerFile(NamedTuple):
    """The pipeline's ``scheduler_config.json``: its contents and where it is (for messages)."""

    config: dict
    path: Path


class SavedPipeline:
    """The saved pipeline in ``root`` (its ``model_index.json`` already read as ``index``), its networks to
    be loaded onto ``device`` in ``dtype``.

    ``source`` is what the model is called in messages and records (``root`` when None). ``encoders`` maps
    each loaded text encoder's component name to its class name; ``counts`` each loaded network's component
    name to its parameter count; ``networks`` each denoiser network loaded by :meth:`network`.
    """

    def __init__(self, root: Path, index: dict, *, device, dtype: torch.dtype, source: str | None = None):
        self.root = Path(root)
        self.index = index
        self.index_path = self.root / INDEX
        self.device = device
        self.dtype = dtype
        self.source = source or str(self.root)
        self.encoders: dict[str, str] = {}
        self.counts: dict[str, int] = {}
        self.networks: dict[str, nn.Module] = {}

    @property
    def class_name(self):
        """The index's ``_class_name``: the pipeline class it was saved from."""
        return self.index.get("_class_name")

    def entry(self, name: str) -> tuple[str, str] | None:
        """``(library, class)`` of a component in model_index.json, None when it is null / absent."""
        entry = self.index.get(name)
        if entry is None or (isinstance(entry, (list, tuple)) and all(e is None for e in entry)):
            return None
        if (not isinstance(entry, (list, tuple)) or len(entry) != 2
                or not all(isinstance(e, str) for e in entry)):
            raise ModelError(f"{self.index_path}: component {name!r} is {entry!r}, expected [library, class]")
        return entry[0], entry[1]

    def listed(self) -> list[str]:
        """Every component the index names a ``[library, class]`` for (null ones left out), sorted."""
        return sorted(k for k, v in self.index.items() if not k.startswith("_") and isinstance(v, list)
                      and len(v) == 2 and all(isinstance(e, str) for e in v))

    def check_present(self, names) -> None:
        """ModelError unless each of ``names`` is listed in the index and has its folder: checked before
        anything heavy loads, so a broken directory fails at once."""
        for name in names:
            self._folder(name, self._needed(name))

    def _needed(self, name: str) -> tuple[str, str]:
        entry = self.entry(name)
        if entry is None:
            raise ModelError(f"{self.index_path} names no {name}: this pipeline cannot be sampled without it")
        return entry

    def _folder(self, name: str, entry: tuple[str, str]) -> Path:
        folder = self.root / name
        if not folder.is_dir():
            raise ModelError(f"{folder} is missing: {self.index_path} lists {name} ({'.'.join(entry)})")
        return folder

    def scheduler(self, name: str = "scheduler") -> SchedulerFile:
        """The config file of the scheduler component ``name`` (its settings, not a scheduler object: the
        sampling loop is this library's)."""
        path = self.root / name / "scheduler_config.json"
        if not path.is_file():
            raise ModelError(f"{path} is missing: the pipeline's {name} config")
        return SchedulerFile(read_json(path), path)

    def _from_pretrained(self, name: str, dtype: torch.dtype | None, required: bool):
        """The component ``name`` as its class loads it (None when the index has none and it is not
        ``required``); ``dtype`` None: no dtype given (tokenizers)."""
        entry = self._needed(name) if required else self.entry(name)
        if entry is None:
            return None
        library, class_name = entry
        folder = self._folder(name, entry)
        cls = _component_class(library, class_name, folder)
        kwargs = {"local_files_only": True}
        if dtype is not None:
            kwargs["torch_dtype" if library == "diffusers" else "dtype"] = dtype
            variant = _variant(folder)
            if variant:
                kwargs["variant"] = variant
        try:
            with _quiet():
                return cls.from_pretrained(folder, **kwargs)
        except _LOAD_ERRORS as e:
            raise ModelError(f"cannot load {folder} ({class_name}): {one_line(e)}") from None

    def load(self, name: str, *, required: bool = True, dtype: torch.dtype | None = None):
        """The component ``name``, None when the index has none and it is not ``required``.

        A tokenizer loads as saved; any other component must be a torch network: it loads in ``dtype``
        (default: the pipeline's) and is moved to the device, in eval mode, frozen. It is not cast after
        loading: that would also cast the modules diffusers keeps in float32.
        """
        is_network = not name.startswith("tokenizer")
        network_dtype = self.dtype if dtype is None else dtype
        module = self._from_pretrained(name, network_dtype if is_network else None, required)
        if isinstance(module, nn.Module):
            module.to(device=self.device).eval().requires_grad_(False)
        elif module is not None and is_network:
            raise ModelError(f"{self.root / name}: a {type(module).__name__}, not a torch network")
        return module

    def network(self, name: str, expected: str):
        """The denoiser network ``name``, which must be an ``expected`` (a class name)."""
        net = self.load(name)
        if type(net).__name__ != expected:
            raise ModelError(f"{self.root / name}: a {type(net).__name__}; {self.class_name} needs a "
                             f"{expected}")
        self.counts[name] = parameter_count(net)
        self.networks[name] = net
        return net

    def vae(self):
        """The VAE as a :class:`~.autoencoder.VAE`: in float32 when the networks are float16 and its config
        says ``force_upcast`` (the default), as diffusers' pipelines run it."""
        from .autoencoder import VAE

        entry = self.entry("vae")
        config_path = self.root / "vae" / "config.json"
        config = read_json(config_path) if config_path.is_file() else {}
        force_upcast = bool(config.get("force_upcast", True))
        module = self.load("vae", dtype=torch.float32 if (force_upcast and self.dtype == torch.float16)
                           else self.dtype)
        if not hasattr(module, "encode") or not hasattr(module, "decode"):
            raise ModelError(f"{self.root / 'vae'}: {entry[1]} is not an autoencoder with encode / decode")
        vae = VAE(module, dtype=self.dtype, force_upcast=force_upcast)
        self.counts["vae"] = parameter_count(module)
        return vae

    def text_pair(self, suffix: str = "", *, required: bool = True):
        """``(tokenizer, text_encoder)`` of the components ``tokenizer{suffix}`` / ``text_encoder{suffix}``;
        ``(None, None)`` when the index has neither and they are not ``required``."""
        tokenizer = self.load("tokenizer" + suffix, required=required)
        encoder = self.load("text_encoder" + suffix, required=required)
        if (tokenizer is None) != (encoder is None):
            raise ModelError(f"{self.index_path}: text_encoder{suffix} and tokenizer{suffix} come together")
        if encoder is not None:
            self.encoders["text_encoder" + suffix] = type(encoder).__name__
            self.counts["text_encoder" + suffix] = parameter_count(encoder)
        return tokenizer, encoder
