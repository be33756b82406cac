"""The bundles the gateway run uses, checked in as tests/data/gateway_bundles.tar.xz.

On the workstation (torch installed) the fixtures build them now, with the current export
code; a gateway has no torch, so there they come from the archive, unpacked into the test
session's tmp. The windows the tests publish (tests/data/basicmotions.npz, the real
BasicMotions data) are the same in both runs.

    HAVE_TORCH                          # the fixtures build (True) or unpack (False)
    unpack("basicmotions", root)        # -> root: root/bundle, root/bank2, ... (PARTS)
    python tests/gateway_data.py        # rebuild both files (in .venv: needs torch, sktime)

tests/test_gateway_data.py checks in the full suite that the archive still is what the
exporter writes now (the same files, manifests, graphs and tensor shapes; not the same
weights: training stops on time) and that basicmotions.npz is the sktime wheel's data.
"""

from __future__ import annotations

import importlib.util
import io
import sys
import tarfile
import tempfile
from pathlib import Path, PurePosixPath

DATA = Path(__file__).resolve().parent / "data"
ARCHIVE = DATA / "gateway_bundles.tar.xz"
HAVE_TORCH = importlib.util.find_spec("torch") is not None

# part -> its bundle directories (the builders' work files, weights and PEFT adapter
# directories, stay out: a gateway never reads them).
PARTS: dict[str, tuple[str, ...]] = {
    "basicmotions": ("bundle", "bank2", "bank4", "static4"),  # reference_bundle.py
    "engine": ("dynamic", "static4", "bank", "bank_static4"),  # adapter_factory.py
    "signing": ("bundle",),  # adapter_factory.py signing_bundle
    "shapes": ("features", "images", "samples"),  # shape_models.py: two bundles, test rows
}
SHAPE_KINDS = ("features", "images")  # (N, 30) breast-cancer rows, (N, 1, 8, 8) digit scans
SHAPE_SAMPLES = 32  # held-out rows of each kind the gateway tests publish


def unpack(part: str, root: Path) -> Path:
    """root/<dir>/... for each of PARTS[part]'s directories, from the archive; root."""
    if part not in PARTS:
        raise KeyError(f"{part!r}: the parts are {sorted(PARTS)}")
    if not ARCHIVE.is_file():
        raise FileNotFoundError(f"{ARCHIVE} is missing: run `python tests/gateway_data.py` "
                                "in the workstation venv (.venv) to build it")
    with tarfile.open(ARCHIVE, "r:xz") as tar:
        for member in tar.getmembers():
            name = PurePosixPath(member.name)
            if not member.isfile() or name.parts[0] != part:
                continue
            if ".." in name.parts or name.is_absolute():
                raise ValueError(f"{ARCHIVE}: unsafe member name {member.name!r}")
            dest = root.joinpath(*name.parts[1:])
            dest.parent.mkdir(parents=True, exist_ok=True)
            dest.write_bytes(tar.extractfile(member).read())
    return root


def build(root: Path) -> Path:
    """Every part under root/<part>, built now with torch and the exporter; root."""
    from adapter_factory import engine_bundles, signing_bundle
    from reference_bundle import build_bank_bundle, build_bundle, build_static_bundle

    motions = root / "basicmotions"
    build_bundle(motions)
    for bank in (2, 4):
        build_bank_bundle(motions, bank)
    build_static_bundle(motions, 4)
    engine_bundles(root / "engine")
    signing_bundle(root / "signing")
    from shape_models import build_line

    work = root / "shape-work"  # training files: not packed (not in PARTS)
    write_shapes({kind: build_line(kind, work / kind) for kind in SHAPE_KINDS}, root / "shapes")
    return root


def write_shapes(lines: dict, root: Path) -> Path:
    """root/<kind>: each shape_models.Line's attached bundle; root/samples/<kind>.npz: the
    first SHAPE_SAMPLES rows of its held-out split (X raw, y); root."""
    import shutil

    import numpy as np

    (root / "samples").mkdir(parents=True, exist_ok=True)
    for kind, line in lines.items():
        shutil.copytree(line.bundle, root / kind, dirs_exist_ok=True)
        with np.load(line.data["test"], allow_pickle=False) as test:
            np.savez(root / "samples" / f"{kind}.npz", X=test["X"][:SHAPE_SAMPLES],
                     y=test["y"][:SHAPE_SAMPLES])
    return root


def pack(root: Path, archive: Path = ARCHIVE) -> Path:
    """The PARTS directories under root as a reproducible tar.xz (sorted names, no owners,
    no times): the same files give the same archive."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:xz", preset=9) as tar:
        for part, dirs in PARTS.items():
            for name in dirs:
                for path in sorted((root / part / name).rglob("*")):
                    if path.is_file():
                        _add(tar, path, path.relative_to(root).as_posix())
    archive.write_bytes(buffer.getvalue())
    return archive


def _add(tar: tarfile.TarFile, path: Path, name: str) -> None:
    data = path.read_bytes()
    info = tarfile.TarInfo(name)
    info.size, info.mode, info.mtime = len(data), 0o644, 0
    tar.addfile(info, io.BytesIO(data))


def main() -> int:
    from reference_bundle import write_windows

    print(f"wrote {write_windows()}")
    with tempfile.TemporaryDirectory() as tmp:
        archive = pack(build(Path(tmp)))
    print(f"wrote {archive} ({archive.stat().st_size // 1024} KiB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
