"""`edge-export attach` and `add-adapter`: a base graph with adapter slots, adapters as
`.onnx_adapter` files, and the manifest that ties them together (edge/bundle.py)."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import numpy as np
import torch

from edge import __version__
from edge.adapter_checks import check_profile
from edge.bank import AdapterBank
from edge.bundle import (
    ADAPTER_DIR,
    BASE_FILE,
    INDEX_INPUT,
    MANIFEST,
    REFERENCE_INPUTS,
    SLOT_DEFAULTS,
    AdapterEntry,
    BaseInfo,
    Manifest,
    Preprocessing,
    atomic_write,
    features_width,
    read_manifest,
    read_reference_inputs,
    sha256_file,
    verify_base,
    write_manifest,
)
from edge.card import Card
from edge.drift import DriftProfile
from edge.engine import Engine, load_adapter_file, read_adapter_arrays
from edge.errors import AdapterRejected, ExportError, IncompatibleBundle
from export.adapters.model import AdaptedModel
from export.cards import CardOptions, adapter_card, bundle_base_card
from export.drift_profile import META_KEY, profile_of
from export.features import feature_parity
from export.models import load_base, meta_beside, weights_fingerprint
from export.onnx.adapter_files import (
    adapter_file_name,
    check_adapter_name,
    expected_outputs,
    reference_fields,
    run_adapter_features,
    write_onnx_adapter,
)
from export.onnx.exporters import graph_opset, rejected_path
from export.onnx.merge import (
    INPUT,
    OUTPUT,
    ExportReport,
    ExportSettings,
    check_output,
    finish_onnx,
    input_shape,
    io_specs,
    load_settings,
    real_samples,
    sample_inputs,
    to_onnx,
)
from export.onnx.parity import compare, raise_on_failure
from export.onnx.slot_plan import adapter_rank, adapter_tensors, default_tensors, plan_slots
from export.onnx.slots import build_slotted
from export.outputs import share_tree, shared_mode
from export.peft_io import AdapterDir, read_adapter_dir


def check_fingerprint(adapter: AdapterDir, fingerprint: str) -> list[str]:
    """Refuse an adapter trained on other base weights; warn when it recorded none."""
    recorded = adapter.meta.get("base_fingerprint")
    if recorded is None:
        return [f"{adapter.path}: no base fingerprint recorded (not trained here); "
                "compatibility checked by shapes only"]
    if recorded != fingerprint:
        raise AdapterRejected(f"{adapter.path}: trained on a different base (fingerprint "
                              f"{recorded[:12]}…, this base {fingerprint[:12]}…)")
    return []


def adapter_entry(adapter: AdapterDir, name: str, version: int, file: str, sha: str,
                  fingerprint: str, num_classes: int, channels: int,
                  features: int | None = None, card: Card | None = None) -> AdapterEntry:
    """The manifest entry of `adapter`, with the drift profile its metadata records (None
    when it records none), checked against the model's `channels`, its `features` per window
    (None: the graph outputs none) and the adapter's classes, and its `card`
    (export/cards.py adapter_card)."""
    groups = sorted({k.split(".lora_")[0].split(".adapter_")[0].removeprefix("base_model.model.")
                     for k in adapter.tensors})
    classes = adapter.meta.get("class_names") or [str(i) for i in range(num_classes)]
    entry = AdapterEntry(name=name, version=version, kind=adapter.kind, rank=adapter_rank(adapter),
                        targets=groups, file=file, sha256=sha, base_fingerprint=fingerprint,
                        class_names=list(classes),
                        preprocessing=Preprocessing.from_dict(adapter.meta.get("preprocessing")),
                        metrics=adapter.meta.get("metrics", {}),
                        drift_profile=profile_of(adapter.meta, str(adapter.path)),
                        card=card)
    try:
        check_profile(entry, channels, features)
    except AdapterRejected as exc:
        raise AdapterRejected(f"{adapter.path}: {exc}") from None
    return entry


def base_labels(weights: str | Path | None, num_classes: int) -> tuple[list[str], dict]:
    """Class names and training metadata of the base (preprocessing, drift profile), from
    the files beside its weights."""
    meta = {k: v for k, v in meta_beside(weights).items()
            if k in ("class_names", "preprocessing", META_KEY)}
    names = meta.get("class_names") or [str(i) for i in range(num_classes)]
    return list(names), meta


def base_profile(meta: dict, weights: str | Path | None, channels: int,
                 class_names: list[str], features: int | None = None) -> DriftProfile | None:
    """The base's drift profile from the metadata beside its weights (`train --method full`
    writes one in edge_model.json), checked against the base; None when there is none."""
    profile = profile_of(meta, f"{weights} (the files beside it)")
    problem = None if profile is None else profile.problem(channels, class_names, features)
    if problem:
        raise ExportError(f"--weights {weights}: the base's {problem}")
    return profile


def export_attach(*, base: str, weights: str | Path | None, adapters: list[str | Path],
                  out: str | Path, names: list[str] | None = None, max_rank: int | None = None,
                  target: str | Path | None = None, atol: float | None = None,
                  data: str | Path | None = None, input_shape_: tuple[int, ...] | None = None,
                  bank: int = 0, force: bool = False, card: CardOptions | None = None,
                  exporter: str | None = None) -> ExportReport:
    """Write BUNDLE/: base.onnx with one slot per adapted module, every adapter as an
    `.onnx_adapter`, manifest.json; then check each against torch in onnxruntime.
    `bank` K > 0 writes the mixed-adapter variant: slots hold K adapters, rows pick one.
    `card` adds to the cards (export/cards.py): the base flags to the base's, every flag to
    each adapter's (over what its directory records)."""
    if not adapters:
        raise ExportError("attach needs at least one --adapter DIR")
    if bank < 0 or (bank and bank < len(adapters)):
        raise ExportError(f"--bank {bank} must be 0 or at least the number of adapters "
                          f"({len(adapters)})")
    settings = load_settings(target, max_rank=max_rank, atol=atol, exporter=exporter)
    out = Path(out)
    check_output(out, force)
    model = load_base(base, weights=weights).eval()
    fingerprint = weights_fingerprint(model)
    dirs = [read_adapter_dir(a) for a in adapters]
    notes = [n for d in dirs for n in check_fingerprint(d, fingerprint)]
    names = list(names or [d.path.resolve().name for d in dirs])
    if len(set(names)) != len(names) or len(names) != len(dirs):
        raise ExportError(f"adapter names must be unique, one per --adapter: {names} (--name)")
    for name in names:
        check_adapter_name(name)
    base_card = bundle_base_card(card, weights, fingerprint)
    cards = [adapter_card(card, d.meta, base_card, fingerprint) for d in dirs]
    slots = plan_slots(model, dirs, settings.max_rank)
    shape = input_shape(model, input_shape_)
    x = sample_inputs(shape, settings, real_samples(data, dirs[0].meta, shape))
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        manifest = _write_bundle(tmp, model, fingerprint, dirs, names, slots, x, settings,
                                 weights, bank, (base_card, cards), rejected_path(out))
        check = validate_bank if bank else validate_bundle
        parity = check(tmp, manifest, model, dirs, x, settings.tolerance)
        raise_on_failure(parity)
        _record_references(tmp, manifest)
        share_tree(tmp)  # mkdtemp's 0700 and mkstemp's 0600 -> what the umask allows
        if out.exists():
            shutil.rmtree(out)
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    sizes = {BASE_FILE: (out / BASE_FILE).stat().st_size}
    sizes.update({a.file: (out / a.file).stat().st_size for a in manifest.adapters})
    notes.append(settings.exported)
    notes.append(f"{len(slots)} slots, max rank {settings.max_rank}, "
                 f"{len(manifest.adapters)} adapter(s)")
    return ExportReport(out, parity, sizes, notes)


def _record_references(bundle: Path, manifest: Manifest) -> None:
    """Each adapter's expected outputs into the manifest, once parity with torch passed."""
    engine = Engine(bundle / BASE_FILE)
    manifest.adapters = [a.model_copy(update=reference_fields(
        bundle, manifest, bundle / a.file, len(a.class_names), engine))
        for a in manifest.adapters]
    write_manifest(bundle, manifest)


def _write_bundle(tmp: Path, model: torch.nn.Module, fingerprint: str, dirs: list[AdapterDir],
                  names: list[str], slots: list, x: np.ndarray, settings: ExportSettings,
                  weights: str | Path | None, bank: int,
                  cards: tuple[Card, list[Card]], keep: Path) -> Manifest:
    """Write base.onnx, the adapters and the manifest into `tmp`; a base.onnx onnxruntime
    refuses is copied to `keep`."""
    (tmp / ADAPTER_DIR).mkdir()
    defaults = default_tensors(model, slots)
    graph = _write_base(tmp / BASE_FILE, model, slots, defaults, x, settings, bank,
                        fingerprint, keep)
    if bank:
        np.savez(tmp / SLOT_DEFAULTS, **defaults)
    inputs, outputs = io_specs(graph, exclude={s.name for s in slots} | {INDEX_INPUT})
    num_classes, channels = int(outputs[0].shape[-1]), int(inputs[0].shape[1])
    entries = []
    for adapter, name, card in zip(dirs, names, cards[1], strict=True):
        file = adapter_file_name(name, 1)
        write_onnx_adapter(tmp / file, adapter_tensors(adapter, slots), 1)
        entries.append(adapter_entry(adapter, name, 1, file, sha256_file(tmp / file),
                                     fingerprint, num_classes, channels,
                                     features_width(outputs), card))
    np.save(tmp / REFERENCE_INPUTS, x)
    with torch.no_grad():
        base_classes = int(model(torch.from_numpy(x[:1])).shape[-1])
    class_names, base_meta = base_labels(weights, base_classes)
    manifest = Manifest(
        target=settings.target,
        base=BaseInfo(sha256=sha256_file(tmp / BASE_FILE), weights_fingerprint=fingerprint,
                      opset=graph_opset(graph), precision=settings.precision,
                      class_names=class_names,
                      preprocessing=Preprocessing.from_dict(base_meta.get("preprocessing")),
                      drift_profile=base_profile(base_meta, weights, channels, class_names,
                                                 features_width(outputs)),
                      card=cards[0]),
        inputs=inputs, outputs=outputs, dynamic_batch=settings.dynamic,
        max_rank=settings.max_rank, bank=bank, num_classes=num_classes, slots=slots,
        adapters=entries)
    write_manifest(tmp, manifest)
    return manifest


def _write_base(path: Path, model: torch.nn.Module, slots: list, defaults: dict, x: np.ndarray,
                settings: ExportSettings, bank: int, fingerprint: str, keep: Path):
    """base.onnx: inputs x [, adapter_index], then one per slot with its default attached."""
    if bank:  # every bank entry starts as the base: (K, *slot shape)
        defaults = {k: np.repeat(v[None], bank, axis=0) for k, v in defaults.items()}
    index = [torch.zeros(len(x), dtype=torch.int64)] if bank else []
    args = (torch.from_numpy(x), *index, *[torch.from_numpy(defaults[s.name]) for s in slots])
    names = [INPUT, *([INDEX_INPUT] if bank else []), *[s.name for s in slots]]
    to_onnx(build_slotted(model, slots, bank), args, names, path, settings,
            batch_inputs=2 if bank else 1)
    meta = {"edge.kind": "attached-base", "edge.weights_fingerprint": fingerprint,
            "edge.max_rank": str(settings.max_rank), "edge.slots": str(len(slots)),
            "edge.bank": str(bank), "edge.package_version": __version__}
    return finish_onnx(path, defaults=defaults, metadata=meta, settings=settings, keep=keep)


def validate_bundle(bundle: Path, manifest: Manifest, model: torch.nn.Module,
                    dirs: list[AdapterDir], x: np.ndarray, atol: float) -> list:
    """onnxruntime vs torch, logits and features: no adapter = the base; each adapter
    active = torch with it."""
    import copy

    engine = Engine(bundle / BASE_FILE)
    with torch.no_grad():
        want = model(torch.from_numpy(x)).numpy()
    got, features = engine.run_with_features(x)
    results = [compare("attached, no adapter", OUTPUT, got, want, atol, columns=want.shape[1])]
    results += feature_parity("attached, no adapter", model, (torch.from_numpy(x),), features,
                              atol)
    adapted = AdaptedModel(copy.deepcopy(model)).eval()
    for adapter, entry in zip(dirs, manifest.adapters, strict=True):
        got = engine.run_with_features(x, load_adapter_file(bundle / entry.file))
        results += _parity_with(adapted, adapter, entry, x, got, atol)
    return results


def validate_bank(bundle: Path, manifest: Manifest, model: torch.nn.Module,
                  dirs: list[AdapterDir], x: np.ndarray, atol: float) -> list:
    """One mixed batch: row i uses bank entry i % (n + 1), entry n being the base (when the
    bank has an entry left for it: K = n adapters fill it); each row must equal torch with
    that row's adapter, logits and features."""
    import copy

    bank = AdapterBank.for_bundle(bundle, manifest)
    for k, entry in enumerate(manifest.adapters):
        bank.load(k, read_adapter_arrays(bundle / entry.file))
    n = len(manifest.adapters)
    entries = min(n + 1, manifest.bank)
    rows = np.concatenate([x, x])  # every entry sees several rows
    index = np.arange(len(rows)) % entries
    got, features = Engine(bundle / BASE_FILE).run_with_features(rows, feeds=bank.feeds(index))
    adapted = AdaptedModel(copy.deepcopy(model)).eval()
    results = []
    for k in range(entries):
        mine = index == k
        mine_features = None if features is None else features[mine]
        if k == n:
            with torch.no_grad():
                want = model(torch.from_numpy(rows[mine])).numpy()
            results.append(compare("bank, base rows", OUTPUT, got[mine], want, atol,
                                   columns=want.shape[1]))
            results += feature_parity("bank, base rows", model, (torch.from_numpy(rows[mine]),),
                                      mine_features, atol)
        else:
            entry = manifest.adapters[k]
            results += _parity_with(adapted, dirs[k], entry, rows[mine],
                                    (got[mine], mine_features), atol, f"bank + {entry.name}")
    return results


def _parity_with(adapted: AdaptedModel, source: AdapterDir, entry: AdapterEntry,
                 x: np.ndarray, got: tuple[np.ndarray, np.ndarray | None], atol: float,
                 check: str | None = None) -> list:
    """Add `source` to the torch model and compare its logits and features with
    onnxruntime's `got` (logits, features or None)."""
    adapted.add_adapter(entry.name, source.config)
    adapted.load_adapter_state_dict(entry.name, source.tensors, source=str(source.path))
    with torch.no_grad():
        want = adapted(torch.from_numpy(x)).numpy()
    check = check or f"attached + {entry.name}"
    return [compare(check, OUTPUT, got[0], want, atol, columns=want.shape[1]),
            *feature_parity(check, adapted, (torch.from_numpy(x),), got[1], atol)]


def add_adapter(*, bundle: str | Path, adapter: str | Path, name: str,
                version: int | None = None, base: str | None = None,
                weights: str | Path | None = None, atol: float | None = None,
                force: bool = False, card: CardOptions | None = None) -> ExportReport:
    """Convert a new adapter for an existing bundle (single-slot or bank); base.onnx is
    read, never rewritten. The adapter is written to a staging file and renamed into place
    only once every check passed: a refused replacement (--force) leaves the old file and
    manifest.json untouched. `card` adds to the adapter's card (export/cards.py) over what
    its directory records; the bundle's base card says what it is trained on."""
    check_adapter_name(name)
    bundle = Path(bundle)
    manifest = read_manifest(bundle)
    verify_base(bundle, manifest)
    source = read_adapter_dir(adapter)
    notes = check_fingerprint(source, manifest.base.weights_fingerprint)
    new_card = adapter_card(card, source.meta, manifest.base.card,
                            manifest.base.weights_fingerprint)
    rank = adapter_rank(source)
    if rank > manifest.max_rank:
        raise AdapterRejected(f"{source.path}: rank {rank} exceeds the bundle's max rank "
                              f"{manifest.max_rank}; re-export it with a larger --max-rank")
    tensors = adapter_tensors(source, manifest.slots)
    taken = [a.version for a in manifest.adapters if a.name == name]
    version = version or max(taken, default=0) + 1
    if version in taken and not force:
        raise ExportError(f"adapter {name!r} version {version} exists in {bundle}; "
                          "pass another --version, or --force to replace it")
    file = adapter_file_name(name, version)
    staging = bundle / ADAPTER_DIR / f".{Path(file).name}.staging"  # beside, same filesystem
    try:
        write_onnx_adapter(staging, tensors, version)
        entry = adapter_entry(source, name, version, file, sha256_file(staging),
                              manifest.base.weights_fingerprint, manifest.num_classes,
                              int(manifest.inputs[0].shape[1]), manifest.features,
                              new_card)
        parity, entry = _check_added(bundle, manifest, staging, entry, source, base, weights,
                                     atol)
        atomic_write(bundle / file, staging.read_bytes())  # only now: every check passed
        (bundle / file).chmod(shared_mode())
    finally:
        staging.unlink(missing_ok=True)
    manifest.adapters = [a for a in manifest.adapters
                         if (a.name, a.version) != (name, version)] + [entry]
    write_manifest(bundle, manifest)
    (bundle / MANIFEST).chmod(shared_mode())  # atomic_write's temp file is 0600
    sizes = {file: (bundle / file).stat().st_size}
    return ExportReport(bundle / file, parity, sizes, notes)


def _check_added(bundle: Path, manifest: Manifest, staging: Path, entry: AdapterEntry,
                 source: AdapterDir, base: str | None, weights: str | Path | None,
                 atol: float | None) -> tuple[list, AdapterEntry]:
    """Run the staged adapter on the bundle's reference rows (bank entry 0 on a bank
    bundle): finite, and equal to torch when `--base/--weights` are given. Returns the
    parity results and the entry with these outputs recorded as its expected ones."""
    rows = read_reference_inputs(bundle, manifest)  # the gateway's first 8 rows, or None
    x = rows if rows is not None else _all_reference_inputs(bundle)
    try:
        got, features = run_adapter_features(Engine(bundle / manifest.base.file), bundle,
                                             manifest, staging, x)
    except AdapterRejected as exc:
        raise AdapterRejected(f"{source.path}: {exc}") from None
    if not np.isfinite(got).all():
        raise AdapterRejected(f"{source.path}: gives non-finite outputs on the bundle's "
                              "reference inputs")
    results = []
    if base is not None:
        model = load_base(base, weights=weights).eval()
        tol = ExportSettings(precision=manifest.base.precision, atol=atol).tolerance
        results = _parity_with(AdaptedModel(model).eval(), source, entry, x,
                               (got, features), tol)
        raise_on_failure(results)
    if rows is None:  # no usable reference_inputs.npy: nothing a gateway compares
        return results, entry
    return results, entry.model_copy(update=expected_outputs(x, got, len(entry.class_names)))


def _all_reference_inputs(bundle: Path) -> np.ndarray:
    path = bundle / REFERENCE_INPUTS
    if not path.is_file():
        raise IncompatibleBundle(f"{bundle}: no {REFERENCE_INPUTS}; re-export the bundle "
                                 "with `edge-export attach`")
    return np.load(path, allow_pickle=False)
