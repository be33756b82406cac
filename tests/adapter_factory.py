"""Small reference bases and randomised adapters of every kind, for export and engine tests.

    ref = reference_adapters(root)   # base, its weights file, and PEFT adapter directories:
                                     # lora_head (LoRA on q, v, the conv stem and fc1, plus a
                                     # 7-class head), lora_qv, bottleneck
    engine_bundles(root)   # {name: root/name}: those adapters exported four ways (engine tests)
    signing_bundle(root)   # root/bundle: a tiny base with one LoRA adapter "line7"

The engine and signing bundles are also checked in for the gateway run (tests/gateway_data.py).
"""

from __future__ import annotations

import copy
from pathlib import Path

import torch
from torch import nn

from export.adapters import AdaptedModel, BottleneckConfig, LoraConfig, inject
from export.models import SensorTransformer, save_base, weights_fingerprint
from export.onnx.attach import export_attach
from export.peft_io import save_adapter

REF = dict(in_channels=2, num_classes=5, length=64, d_model=32, depth=1, heads=4, patch=8)
ENGINE_KINDS = ("lora_head", "lora_qv", "bottleneck")  # test_engine.py: KINDS


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


def _target(root: Path, batch: int) -> Path:
    path = root / f"target-{batch}.toml"
    path.write_text(f'[device]\nid = "t"\n\n[export]\nbatch = {batch}\n')
    return path


def engine_bundles(root: Path) -> dict[str, Path]:
    """The reference base and its ENGINE_KINDS adapters as a dynamic bundle ("dynamic"), a
    batch-4 bundle ("static4"), a bank of 4 ("bank") and both ("bank_static4")."""
    ref = reference_adapters(root / "adapters")
    adapters = [ref[k] for k in ENGINE_KINDS]
    out = {}
    for name, kwargs in (("dynamic", {}), ("static4", {"target": _target(root, 4)}),
                         ("bank", {"bank": 4}),
                         ("bank_static4", {"bank": 4, "target": _target(root, 4)})):
        out[name] = root / name
        export_attach(base="reference", weights=ref["weights"], adapters=adapters,
                      out=out[name], names=list(ENGINE_KINDS), **kwargs)
    return out


def signing_bundle(root: Path) -> Path:
    """root/bundle: a tiny reference base with one untrained LoRA adapter named "line7"."""
    torch.manual_seed(0)
    base = SensorTransformer(in_channels=1, num_classes=3, length=32, d_model=16, depth=1,
                             heads=2, patch=8)
    weights = save_base(base, root / "base.safetensors")
    fingerprint = weights_fingerprint(base)
    adapted = inject(base, LoraConfig(r=2, target_modules=["q", "v"]))
    save_adapter(adapted, root / "line7", meta={"base_fingerprint": fingerprint})
    export_attach(base="reference", weights=weights, adapters=[root / "line7"],
                  out=root / "bundle")
    return root / "bundle"
