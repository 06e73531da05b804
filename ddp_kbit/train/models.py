"""Models by name (built in) or by ``MODULE:FUNCTION`` / ``PATH.py:FUNCTION`` (the
user's own), sized from the manifest's sample shape and class count."""
from __future__ import annotations

import math

from torch import nn

from ddp_kbit.errors import ConfigError, first_line
from ddp_kbit.train.usercode import CodeRef, load


def channels_and_hw(shape: tuple[int, ...]) -> tuple[int, int, int]:
    """(C, H, W) for a sample shape: (H, W) is greyscale, (H, W, C) is HWC colour."""
    if len(shape) == 2:
        return 1, shape[0], shape[1]
    if len(shape) == 3:
        return shape[2], shape[0], shape[1]
    raise ValueError(f"models take (H, W) or (H, W, C) samples, got shape {list(shape)}")


def cnn(shape: tuple[int, ...], num_classes: int, width: int = 32) -> nn.Module:
    """Two conv + pool blocks (with batch norm) and a small head: the classic
    Fashion-MNIST baseline family (0.88-0.92 test accuracy)."""
    c, h, w = channels_and_hw(shape)
    feat = 2 * width * (h // 4) * (w // 4)
    return nn.Sequential(
        nn.Conv2d(c, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(inplace=True), nn.MaxPool2d(2),
        nn.Conv2d(width, 2 * width, 3, padding=1), nn.BatchNorm2d(2 * width), nn.ReLU(inplace=True), nn.MaxPool2d(2),
        nn.Flatten(), nn.Dropout(0.25), nn.Linear(feat, 128), nn.ReLU(inplace=True), nn.Dropout(0.25),
        nn.Linear(128, num_classes),
    )


def cnn3(shape: tuple[int, ...], num_classes: int, width: int = 28) -> nn.Module:
    """``cnn`` with a third conv at quarter resolution and a 256-wide head (dropout 0.2;
    0.3 lost ~0.5 points in 5 epochs), 28 channels wide (32 gains ~0.1 point for ~12%
    more wall time, 24 loses ~0.3): the default, with the default recipe (one-cycle learning
    rate up to 5e-3, label smoothing 0.1) 0.930-0.931 Fashion-MNIST test accuracy after
    5 epochs in the wall time of the earlier two-conv ``cnn`` (README, "Measured figures")."""
    c, h, w = channels_and_hw(shape)
    feat = 2 * width * (h // 4) * (w // 4)
    return nn.Sequential(
        nn.Conv2d(c, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(inplace=True), nn.MaxPool2d(2),
        nn.Conv2d(width, 2 * width, 3, padding=1), nn.BatchNorm2d(2 * width), nn.ReLU(inplace=True), nn.MaxPool2d(2),
        nn.Conv2d(2 * width, 2 * width, 3, padding=1), nn.BatchNorm2d(2 * width), nn.ReLU(inplace=True),
        nn.Flatten(), nn.Dropout(0.2), nn.Linear(feat, 256), nn.ReLU(inplace=True), nn.Dropout(0.2),
        nn.Linear(256, num_classes),
    )


def mlp(shape: tuple[int, ...], num_classes: int, hidden: int = 256) -> nn.Module:
    return nn.Sequential(nn.Flatten(), nn.Linear(math.prod(shape), hidden), nn.ReLU(inplace=True),
                         nn.Dropout(0.2), nn.Linear(hidden, num_classes))


BUILDERS = {"cnn3": cnn3, "cnn": cnn, "mlp": mlp}  # names as in ddp_kbit.config.MODELS


def example_batch(shape: tuple[int, ...], dtype: str = "uint8", n: int = 2):
    """A batch of ``n`` zero samples as the training step sees them: float, N x C x H x W."""
    import torch

    c, h, w = channels_and_hw(tuple(shape))
    return torch.zeros((n, c, h, w), dtype=torch.float32)


def model_builder(spec):
    """A built-in name's builder, the user's function (``MODULE:FUNCTION`` or
    ``PATH.py:FUNCTION`` as a parsed :class:`CodeRef`), or a callable (Python API)."""
    if isinstance(spec, CodeRef):
        return load(spec, "--model")
    if callable(spec):
        return spec
    try:
        return BUILDERS[spec]
    except KeyError:
        raise ConfigError(f"unknown model {spec!r}; built-in: {', '.join(BUILDERS)}, or MODULE:FUNCTION, "
                          "or PATH.py:FUNCTION") from None


def make_model(spec: str | CodeRef, shape: tuple[int, ...], num_classes: int) -> nn.Module:
    """``FUNCTION(shape, num_classes) -> torch.nn.Module``; anything else is one line naming the spec."""
    name = spec_name(spec)
    try:
        model = model_builder(spec)(tuple(shape), num_classes)
    except ConfigError:
        raise
    except Exception as exc:
        raise ConfigError(f"--model {name}: building it for shape {list(shape)}, {num_classes} classes raised "
                          f"{type(exc).__name__}: {first_line(exc, 300)}") from None
    if not isinstance(model, nn.Module):
        raise ConfigError(f"--model {name} returned {type(model).__name__}, not a torch.nn.Module")
    return model


def check_model(spec: str | CodeRef, shape: tuple[int, ...], num_classes: int) -> int:
    """Build the model once and run one forward pass on a batch of the topic's shape,
    before any rank starts: a wrong return type, an import error or a shape mismatch
    is one line naming the spec. Returns the parameter count."""
    import torch

    name = spec_name(spec)
    model = make_model(spec, shape, num_classes)
    x = example_batch(shape)
    try:
        with torch.no_grad():
            out = model.eval()(x)
    except Exception as exc:
        raise ConfigError(f"--model {name}: a forward pass on a batch of shape {list(x.shape)} (N, C, H, W) "
                          f"failed: {type(exc).__name__}: {first_line(exc, 300)}") from None
    if not isinstance(out, torch.Tensor) or tuple(out.shape) != (len(x), num_classes):
        got = list(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise ConfigError(f"--model {name}: the output for a batch of {len(x)} is {got}, expected "
                          f"[{len(x)}, {num_classes}] (one logit per class)")
    return parameter_count(model)


def spec_name(spec) -> str:
    if isinstance(spec, CodeRef):
        return spec.spec
    if isinstance(spec, str):
        return spec
    return f"{getattr(spec, '__module__', '?')}:{getattr(spec, '__qualname__', type(spec).__name__)}"


def parameter_count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
