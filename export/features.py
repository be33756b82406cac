"""The penultimate features of a model (the input of its classification head): found by one
traced forward pass, read with a forward pre-hook, and exported as a second graph output
(`features`, (N, D)) so the gateway gets them from the same inference run as the logits.

    path = head_path(model, (x,))                 # "model.head", or None: no such head
    logits, feats = features_of(model, x, path)   # (N, K), (N, D) float32
    WithFeatures(model, path)(x)                  # (logits, features): what gets exported

The head is the outermost module, other than the model itself and modules fed the model's own
input, whose output is the model's output (the same tensor) and whose input is one (B, D)
tensor. That is the `head` Linear of the reference model, or its LoRA / modules_to_save
wrapper once adapted, or a slot module in an attached graph; for a model whose logits are
computed after the last layer (a slice, a pooling of per-token logits) there is none, and
the profile and the graph simply carry no features.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from edge.drift.features import FEATURES_OUTPUT
from edge.errors import ExportError
from export.onnx.parity import ParityResult, compare

__all__ = ["FEATURES_OUTPUT", "WithFeatures", "feature_parity", "features_of", "head_path"]

BATCH = 256  # windows per forward pass in features_of: bounds memory on long training sets


def head_path(model: nn.Module, args: tuple) -> str | None:
    """Dotted path of `model`'s classification head for inputs `args` (see the module
    docstring), or None."""
    calls: list[tuple[str, tuple, object]] = []  # (path, inputs, output) in call order
    hooks = [module.register_forward_hook(
        lambda _m, inputs, output, path=path: calls.append((path, inputs, output)))
        for path, module in model.named_modules() if path]
    try:
        with torch.no_grad():
            out = model(*args)
    finally:
        for hook in hooks:
            hook.remove()
    fed = {id(a) for a in args}
    found = [path for path, inputs, output in calls
             if output is out and len(inputs) == 1 and isinstance(inputs[0], torch.Tensor)
             and inputs[0].ndim == 2 and inputs[0].shape[0] == out.shape[0]
             and id(inputs[0]) not in fed]
    return min(found, key=lambda p: p.count("."), default=None)


class _Tap:
    """A forward pre-hook on one module that keeps its input tensor."""

    def __init__(self, module: nn.Module) -> None:
        self.value: torch.Tensor | None = None
        self.handle = module.register_forward_pre_hook(self._keep)

    def _keep(self, _module: nn.Module, inputs: tuple) -> None:
        self.value = inputs[0]


class WithFeatures(nn.Module):
    """`model` with a second output: the input of its module at `path`, (B, D)."""

    def __init__(self, model: nn.Module, path: str) -> None:
        super().__init__()
        self.model = model
        self.path = path

    def forward(self, *args: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        tap = _Tap(self.model.get_submodule(self.path))
        try:
            logits = self.model(*args)
        finally:
            tap.handle.remove()
        if tap.value is None:
            raise RuntimeError(f"{self.path} was not called in forward")
        return logits, tap.value


def features_of(model: nn.Module, x: torch.Tensor, path: str
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits (N, K) and features (N, D) of `model` in eval mode on x, in batches."""
    was_training = model.training
    wrapped = WithFeatures(model, path).eval()
    try:
        with torch.no_grad():
            parts = [wrapped(x[i:i + BATCH]) for i in range(0, len(x), BATCH)]
    finally:
        model.train(was_training)
    return torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])


def feature_parity(check: str, model: nn.Module, args: tuple, got: np.ndarray | None,
                   atol: float) -> list[ParityResult]:
    """onnxruntime's `features` output `got` (N, D) against torch's for the same inputs:
    [] when neither has features; a failed check when only one side has them."""
    path = head_path(model.eval(), args)
    if path is None and got is None:
        return []
    if path is None or got is None:
        side = "onnxruntime" if path is None else "torch"
        raise ExportError(f"parity {check}: only {side} gives penultimate features")
    with torch.no_grad():
        want = WithFeatures(model, path).eval()(*args)[1].numpy()
    return [compare(check, FEATURES_OUTPUT, got, want, atol)]
