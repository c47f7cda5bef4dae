"""Loading a user's own ``nn.Module`` so that any segmentation model can be searched."""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import sys
from pathlib import Path

import torch
from torch import nn

from ..errors import UserError
from ._errors import brief


def load_user_model(spec: str, state_dict_path: str | None = None) -> nn.Module:
    """Construct the user's model class with no arguments, optionally loading its weights.

    ``spec`` is ``"package.module:Class"`` (importable) or ``"path/to/file.py:Class"``. The
    state dict is read with ``torch.load(weights_only=True)``: nothing is unpickled. Every
    failure (no such file or class, construction error, mismatched weights) raises
    :class:`UserError`.

    The model is an instance of :func:`first_output` of the class: same modules, names and
    state dict, but a forward that returns a list or tuple (deep supervision, nnU-Net's
    full-resolution output first) gives only its first item; ``all_outputs`` gives them all.
    """
    model = _construct(first_output(_find_class(spec)), spec)
    if state_dict_path is not None:
        load_weights(model, state_dict_path, spec)
    return model


def model_digest(spec: str) -> str | None:
    """The sha256 of the file that defines a ``module:Class`` or ``file.py:Class`` model, or
    of an nnU-Net fold's plans and checkpoint; None for a preset name or a module whose file
    cannot be found (nothing is imported for a file path)."""
    if Path(spec).is_dir():
        from ._nnunet import nnunet_digest  # an nnU-Net folder builds on this module's first_output
        return nnunet_digest(spec)
    location, _, _ = spec.rpartition(":")
    if not location:
        return None
    if location.endswith(".py"):
        path = Path(location)
    else:
        try:
            found = importlib.util.find_spec(location)
        except (ImportError, ValueError):
            return None
        path = Path(found.origin) if found and found.origin else None
    return hashlib.sha256(path.read_bytes()).hexdigest() if path and path.is_file() else None


def first_output(cls: type[nn.Module]) -> type[nn.Module]:
    """A subclass of ``cls`` whose forward returns only the first output of a list or tuple.

    The rest of autosculpt (training, Dice, latency, export) sees one logits tensor; pruning
    traces ``all_outputs`` (the class's own forward), so every head keeps consistent channels.
    """

    def forward(self, *args, **kwargs):
        out = cls.forward(self, *args, **kwargs)
        return out[0] if isinstance(out, (list, tuple)) else out

    return type(cls.__name__, (cls,), {"forward": forward, "all_outputs": cls.forward, "__module__": cls.__module__})


def _find_class(spec: str) -> type[nn.Module]:
    location, _, class_name = spec.rpartition(":")
    if not location or not class_name:
        raise UserError(f"model {spec!r} is not module:Class: give e.g. mypkg.models:Net or path/to/net.py:Net")
    module = _import_file(location) if location.endswith(".py") else _import_module(location)
    cls = getattr(module, class_name, None)
    if not (isinstance(cls, type) and issubclass(cls, nn.Module)):
        raise UserError(f"{location} has no nn.Module class {class_name!r}: check the name after the colon")
    return cls


def _import_module(name: str):
    try:
        return importlib.import_module(name)
    except Exception as err:  # the user's code may raise anything on import
        raise UserError(f"cannot import {name} ({brief(err)}): check the module path and its imports") from err


def _import_file(path: str):
    file = Path(path)
    if not file.is_file():
        raise UserError(f"model file {path} not found: check the path before the colon")
    name = f"_autosculpt_user_{file.stem}"
    module = importlib.util.module_from_spec(importlib.util.spec_from_file_location(name, file))
    sys.modules[name] = module  # dataclasses and pickling look classes up here
    try:
        module.__spec__.loader.exec_module(module)
    except Exception as err:
        del sys.modules[name]
        raise UserError(f"cannot import {path} ({brief(err)}): fix the error in that file") from err
    return module


def _construct(cls: type[nn.Module], spec: str) -> nn.Module:
    try:
        return cls()
    except Exception as err:
        raise UserError(f"{spec}() failed ({brief(err)}): the class must be constructible without arguments") from err


def load_weights(model: nn.Module, path: str, spec: str) -> None:
    """Load the state dict file ``path`` into ``model`` (``spec`` names it in errors) with
    ``torch.load(weights_only=True)``; a missing, unreadable or mismatched file raises :class:`UserError`."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise UserError(f"state dict {path} not found: check the path") from None
    except Exception as err:
        message = f"cannot read state dict {path} ({brief(err)})"
        raise UserError(f"{message}: save it with torch.save(model.state_dict(), path)") from err
    if not isinstance(state, dict):
        raise UserError(f"{path} holds a {type(state).__name__}, not a state dict: save model.state_dict()")
    try:
        model.load_state_dict(state)
    except RuntimeError as err:
        raise UserError(f"state dict {path} does not fit {spec} ({brief(err)}): use the weights of this class") from err
