"""What a trained model needs beside its weights, so evaluating it cannot be silently
wrong: the model's spec (a file's text included), the transforms it was trained
with, the input it takes and the label it predicts. Written as ``model.json`` beside
``model.pt`` (which stays a plain state_dict, loadable with ``weights_only=True``)
and kept in every checkpoint. Plain JSON data: nothing is unpickled.

Code given as Python functions (the Python API's ``model=``, ``transforms=[...]``)
is recorded by name only: a script's function cannot be loaded again by name, so
``--mode evaluate`` asks for ``--model``/``--transform`` instead of guessing.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

from ddp_kbit.errors import ConfigError
from ddp_kbit.train.models import BUILDERS, spec_name
from ddp_kbit.train.usercode import CodeRef

CARD = "ddp_kbit.model/v1"


def code_entry(obj) -> dict:
    """A model or transform as plain data: a built-in name, a module function, a
    file's function with the file's text, or a Python function (by name only)."""
    if isinstance(obj, CodeRef):
        return {"spec": obj.spec, "name": obj.name, "module": obj.module, "path": obj.path, "source": obj.source}
    if isinstance(obj, str):
        return {"spec": obj, "builtin": obj in BUILDERS}
    return {"spec": spec_name(obj), "loadable": False}


def code_from(entry: dict, what: str):
    """The model spec (a built-in name or a CodeRef) an entry names; one line when it
    was a Python function of the training script."""
    if entry.get("loadable") is False:
        raise ConfigError(f"it was trained with {what} {entry['spec']}, a Python function of the training script, "
                          f"which cannot be loaded by name: pass {what} naming it (MODULE:FUNCTION or "
                          "PATH.py:FUNCTION)")
    if entry.get("builtin"):
        return entry["spec"]
    return CodeRef(entry["spec"], entry["name"], module=entry.get("module"), path=entry.get("path"),
                   source=entry.get("source"))


def make_card(model, transforms, *, shape, dtype: str, num_classes: int, class_names, train_topic: str,
              augment: bool = False) -> dict:
    return {"card": CARD, "model": code_entry(model), "transforms": [code_entry(t) for t in transforms],
            "augment": augment,   # training only: evaluation never augments
            "input": {"fields": {"image": {"kind": "image", "shape": list(shape), "dtype": dtype}}},
            "label": {"kind": "class", "num_classes": num_classes,
                      "class_names": list(class_names) if class_names else None},
            "train_topic": train_topic}


def same_code(a: dict, b: dict) -> bool:
    return a.get("spec") == b.get("spec") and a.get("source") == b.get("source")


def digest(state_dict: dict, card: dict) -> str:
    """Which model this is: its weights (tensor bytes, by name) and the code that
    turns them into predictions (model and transform specs), not the file they came in."""
    import torch

    h = hashlib.sha256()
    for name in sorted(state_dict):
        t = state_dict[name]
        h.update(name.encode())
        if isinstance(t, torch.Tensor):
            h.update(str(t.dtype).encode() + str(tuple(t.shape)).encode())
            h.update(t.detach().cpu().reshape(-1).contiguous().view(torch.uint8).numpy().tobytes())
    h.update(json.dumps([card["model"].get("spec"), [t.get("spec") for t in card["transforms"]]]).encode())
    return h.hexdigest()


def card_path(model_path: str | Path) -> Path:
    return Path(model_path).with_suffix(".json")


def read_card(model_path: str | Path) -> dict | None:
    path = card_path(model_path)
    try:
        card = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{path} is not a model card: {exc}") from None
    if not isinstance(card, dict) or card.get("card") != CARD:
        raise ConfigError(f"{path} is not a ddp_kbit model card ({CARD})")
    return card
