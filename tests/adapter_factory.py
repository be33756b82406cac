"""Small reference bases and randomised adapters of every kind, for export and engine tests.

    ref = reference_adapters(root)   # base, its weights file, and PEFT adapter directories:
                                     # lora_head (LoRA on q, v, the conv stem and fc1, plus a
                                     # 7-class head), lora_qv, bottleneck
"""

from __future__ import annotations

import copy
from pathlib import Path

import torch
from torch import nn

from export.adapters import AdaptedModel, BottleneckConfig, LoraConfig, inject
from export.models import SensorTransformer, save_base, weights_fingerprint
from export.peft_io import save_adapter

REF = dict(in_channels=2, num_classes=5, length=64, d_model=32, depth=1, heads=4, patch=8)


def _randomise(model: AdaptedModel, seed: int) -> None:
    """Non-zero adapter weights, so parity compares real computations."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.1)


def make_adapter(base: nn.Module, config, out: Path, *, seed: int = 0, classes: int | None = None,
                 fingerprint: str | None = None) -> Path:
    model = inject(copy.deepcopy(base), config)
    if classes is not None:
        model.replace_saved_module("default", "head", nn.Linear(base.head.in_features, classes))
    _randomise(model, seed)
    width = classes or getattr(getattr(base, "head", None), "out_features", 0)
    meta = {"base_fingerprint": fingerprint or weights_fingerprint(base),
            "class_names": [f"c{i}" for i in range(width)]}
    return save_adapter(model, out, meta=meta)


def reference_adapters(root: Path) -> dict:
    """A reference base saved to safetensors, and LoRA / bottleneck adapters for it."""
    torch.manual_seed(0)
    base = SensorTransformer(**REF).eval()
    weights = save_base(base, root / "base.safetensors")
    lora_head = make_adapter(base, LoraConfig(r=4, lora_alpha=8, target_modules=[
        "q", "v", "conv1", "fc1"], modules_to_save=["head"]), root / "lora_head", classes=7)
    lora_qv = make_adapter(base, LoraConfig(r=8, lora_alpha=16, target_modules=["q", "v"]),
                           root / "lora_qv", seed=1)
    bottleneck = make_adapter(base, BottleneckConfig(target_modules=["fc2"], size=4),
                              root / "bottleneck", seed=2)
    return dict(root=root, base=base, weights=weights, lora_head=lora_head, lora_qv=lora_qv,
                bottleneck=bottleneck)
