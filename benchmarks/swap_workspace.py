"""The swap benchmark's workspace: two reference bundles (a tiny one and one of the demo's
model size), derived versions of their adapter, unsigned envelopes, merged-model files.

    <work>/train/bundle, bank8          tiny base (d_model 32, depth 1) and its bank export
    <work>/real/bundle                  the demo's model size (d_model 128, depth 2)
    <work>/envelopes[-real]/*.env       versions 2.. as unsigned envelopes; files in *-files
    <work>/merged[-real]/*.onnx         versions 2.. merged into the base, one ONNX each
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests"), str(ROOT / "benchmarks")]

from edge.bundle import read_manifest  # noqa: E402
from edge.contract import Normalizer  # noqa: E402
from edge.engine import Engine, load_adapter_file  # noqa: E402

NAME = "line-a"  # the reference bundle's adapter; versions 2.. are derived from it
BANK = 8
ADAPTERS = {"require_signed": False, "memory_budget_mb": 1024}  # every version stays loaded
# The demo's base size (export/demo/run.py BASE_CONFIG) on BasicMotions' 100-sample windows.
REAL_MODEL = dict(length=100, d_model=128, depth=2, heads=4, mlp_ratio=2, patch=10,
                  dropout=0.0)
MODELS = {"tiny": "train", "real": "real"}  # model size -> its folder under <work>


def prepare(work: Path, cfg: dict) -> dict:
    """Train both bundles, export the tiny one with --bank 8, derive versions (files and
    unsigned envelopes) and merge versions 2..(1 + cfg["merged"]) of each into ONNX files."""
    from reference_bundle import build_bank_bundle, build_bundle  # torch: not in children

    tiny = build_bundle(work / "train", seconds=cfg["seconds"])
    bank = build_bank_bundle(work / "train", BANK)
    real = build_bundle(work / "real", seconds=cfg["seconds"], model=REAL_MODEL)
    most = max(max(cfg["memory"]), cfg["merged"])
    versions = derive_all(tiny, envelope_dir(work, "tiny"), max(most, BANK))
    real_versions = derive_all(real, envelope_dir(work, "real"), most)
    merged = {size: {v: merge_version(work, size, v) for v in range(2, 2 + cfg["merged"])}
              for size in MODELS}
    return {"bundle": tiny, "bank": bank, "versions": versions, "merged": merged["tiny"],
            "real": real, "real_versions": real_versions, "real_merged": merged["real"]}


def envelope_dir(work: Path, size: str) -> Path:
    return work / ("envelopes" if size == "tiny" else f"envelopes-{size}")


def merged_dir(work: Path, size: str) -> Path:
    return work / ("merged" if size == "tiny" else f"merged-{size}")


def derive_all(bundle: Path, envelopes: Path, count: int) -> dict[int, tuple]:
    """Versions 2..(1 + count): files beside `envelopes`, and their unsigned envelopes."""
    from adapter_versions import derive_version, envelope

    envelopes.mkdir()
    versions = {}
    for v in range(2, 2 + count):
        entry, path = derive_version(bundle, NAME, v, envelopes.parent / f"{envelopes.name}-files")
        (envelopes / f"{path.stem}.env").write_bytes(envelope(entry, path))
        versions[v] = (entry, path)
    return versions


def envelope_bytes(versions: dict[int, tuple], version: int) -> bytes:
    path = versions[version][1]  # <work>/<envelopes>-files/<stem>.onnx_adapter
    folder = path.parent.name.removesuffix("-files")
    return (path.parents[1] / folder / f"{path.stem}.env").read_bytes()


def merge_version(work: Path, size: str, version: int) -> Path:
    """The merged ONNX of version v: its PEFT dir with lora_B scaled as derive_version does."""
    from adapter_versions import scale_for
    from safetensors.numpy import load_file, save_file

    from export.onnx.merge import export_merged

    train = work / MODELS[size]
    peft = work / f"peft-{size}" / f"{NAME}.v{version}"
    shutil.copytree(train / "adapters" / NAME, peft)
    weights = peft / "adapter_model.safetensors"
    tensors = load_file(str(weights))
    save_file({k: v * np.float32(scale_for(version)) if ".lora_B." in k else v
               for k, v in tensors.items()}, str(weights))
    out = merged_dir(work, size) / f"{NAME}.v{version}.onnx"
    export_merged(base="reference", weights=train / "base" / "base.safetensors",
                  adapter=peft, out=out)
    return out


def windows(bundle: Path, n: int) -> np.ndarray:
    """n real BasicMotions windows (n, C, L), normalised as the adapter trained."""
    from reference_bundle import sample_windows

    x, _, _ = sample_windows()
    entry = read_manifest(bundle).adapter(NAME)
    norm = Normalizer.from_preprocessing(entry.preprocessing, x.shape[1])
    return norm.apply(np.resize(x, (n, *x.shape[1:])))


def merged_agreement(bundle: Path, merged: dict[int, Path], versions: dict[int, tuple]
                     ) -> float:
    """max |logit diff| of each merged model against base.onnx + the same version's file."""
    x = windows(bundle, 40)
    attached = Engine(bundle / read_manifest(bundle).base.file, threads=1)
    worst = 0.0
    for v, path in merged.items():
        want = attached.run(x, load_adapter_file(versions[v][1]))
        worst = max(worst, float(np.abs(Engine(path, threads=1).run(x) - want).max()))
    return worst


def pct(values: list[float]) -> dict[str, float]:
    return {"p50": float(np.percentile(values, 50)), "p99": float(np.percentile(values, 99)),
            "n": len(values)}


def verdict(ok: bool, text: str) -> str:
    return f"{'pass' if ok else 'MISS'} ({text})"
