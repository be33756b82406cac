"""The gateway's adapter store: every adapter it may serve, each checked before it is held.

    store = AdapterStore.open(cfg, bundle, manifest, engine)
    held, new = store.accept(envelope, source="mqtt")  # the check chain, or AdapterRejected
    store.resolve("press-3", None)                     # the newest held version
    store.loaded(held)                                 # what the engine runs (LoraAdapter or
                                                       # DeviceSlots), arrays in bank mode

Routing tables are built from it through a narrow view (`edge.routing.AdapterSource`:
resolve, loaded, normalizer, bank, prepare_bank); the store itself knows nothing of routes.

The check chain, in order; the first failure is the reason sent back, and nothing changes:
size limit, framing and sha256 of the body (envelope.unpack); Ed25519 signature against the
trusted keys (envelope.verify); name, base fingerprint, kind, rank <= R, classes,
preprocessing and the drift profile (finite, well formed, the model's channels and classes)
against the running bundle; the card (edge/card.py) against [adapters.policy]: licences
allowed, required fields filled; version rules (the same version with other bytes
or a version older than the newest held is refused: no silent replacement, no replay);
tensor names, shapes, dtypes against the slots and all values finite; a warm-up inference
on the bundle's reference samples with finite outputs.

Accepted adapters persist under `<device.state_dir>/adapters/` as `<name>.v<N>.onnx_adapter`
plus `<name>.v<N>.json` (the envelope header: its entry, drift profile included), each
written atomically, the header last:
a header on disk means a complete, checked adapter, so a restart holds the same set.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from pydantic import ValidationError

from .adapter_cache import LoadedCache
from .adapter_checks import (
    check_card,
    check_header,
    check_outputs,
    check_tensors,
    file_stem,
)
from .bank import AdapterBank
from .bundle import (
    REFERENCE_INPUTS,
    AdapterEntry,
    Manifest,
    atomic_write,
    read_reference_inputs,
    sha256_file,
)
from .card_policy import CardPolicy
from .config import Config
from .contract import Normalizer
from .engine import DeviceSlots, Engine, read_adapter_arrays
from .envelope import MAX_HEADER, load_public_keys, unpack, verify
from .errors import (
    AdapterError,
    AdapterRejected,
    ConfigError,
    EdgeError,
    IncompatibleBundle,
    StorageError,
)
from .revocation import Revocations
from .tolerance import logits_tolerance

log = logging.getLogger(__name__)

Key = tuple[str, int]  # (name, version)


@dataclass(frozen=True)
class HeldAdapter:
    """One adapter version the gateway may serve; `entry` is its manifest-style record."""

    entry: AdapterEntry
    path: Path
    size: int
    source: str  # "bundle", "mqtt", "folder"
    signer: str  # a trusted key id, "unsigned", or "bundle"
    accepted: float  # unix time

    @property
    def key(self) -> Key:
        return (self.entry.name, self.entry.version)

    def describe(self) -> dict:
        card = self.entry.card
        return {"name": self.entry.name, "version": self.entry.version,
                "sha256": self.entry.sha256, "size": self.size, "source": self.source,
                "signer": self.signer, "accepted": round(self.accepted, 3),
                "card": None if card is None else card.essentials()}


class AdapterStore:
    """Held adapters by (name, version), their files, and the loaded ones (LRU by bytes).

    `accept` runs on one thread at a time (the control thread); lookups may come from any.
    """

    def __init__(self, *, cfg: Config, bundle: Path, manifest: Manifest, engine: Engine,
                 state_dir: Path, follower: bool = False) -> None:
        self.manifest, self.engine, self.bundle = manifest, engine, bundle
        self.follower = follower  # a follower worker reads the leader's files, never edits them
        self.max_bytes = cfg.limits.max_adapter_bytes
        self.require_signed = cfg.adapters.require_signed
        self.trusted = load_public_keys(cfg.adapters.trusted_keys)
        self.policy = cfg.adapters.policy
        self.dir = state_dir / "adapters"
        self.bank = AdapterBank.for_bundle(bundle, manifest) if engine.banked else None
        self.cache = LoadedCache(int(cfg.adapters.memory_budget_mb * (1 << 20)))
        self.held: dict[Key, HeldAdapter] = {}
        self._lock = threading.Lock()  # guards `held` against concurrent readers
        self._slots = manifest.slot_table()
        self._normalizers: dict[Key, Normalizer] = {}
        self._reference = self._reference_inputs()
        self.revoked = Revocations.load(state_dir)
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ConfigError(f"device.state_dir: {state_dir}: cannot create {self.dir} "
                              f"({exc.strerror})") from None
        self._hold_bundle()
        self._hold_persisted()

    @classmethod
    def open(cls, cfg: Config, bundle: Path, manifest: Manifest, engine: Engine,
             follower: bool = False) -> AdapterStore:
        return cls(cfg=cfg, bundle=bundle, manifest=manifest, engine=engine,
                   state_dir=cfg.device.state_dir, follower=follower)

    # -- lookups ----------------------------------------------------------------------------
    def resolve(self, name: str, version: int | None) -> HeldAdapter:
        """The held adapter `name` at `version`, or its newest version when None."""
        with self._lock:
            found = [h for (n, v), h in self.held.items()
                     if n == name and (version is None or v == version)]
            have = sorted({n for n, _ in self.held}) if not found else []
        if not found:
            have = have or ["(none)"]
            raise AdapterRejected(f"no adapter {name!r}" + (f" version {version}" if version
                                  else "") + f" is held (held: {', '.join(have)})")
        return max(found, key=lambda h: h.entry.version)

    def holds_any(self, name: str) -> bool:
        with self._lock:
            return any(n == name for n, _ in self.held)

    def describe(self) -> list[dict]:
        with self._lock:
            held = sorted(self.held.values(), key=lambda h: h.key)
        return [{**h.describe(), "loaded": self.cache.holds(h.key)} for h in held]

    def loaded(self, held: HeldAdapter):
        """The loaded form of `held`: an ort.LoraAdapter, or its arrays for a bank bundle.
        Memory-mapped or read from disk again when the LRU dropped it."""
        value = self.cache.get(held.key)
        if value is None:
            value = self._load(held.path)
            self.cache.put(held.key, value, held.size)
        return value

    def normalizer(self, held: HeldAdapter, shape: tuple[int, ...]) -> Normalizer:
        """The adapter's normaliser (its own statistics, else the base's), built once:
        it is half of a routing table's build time otherwise."""
        found = self._normalizers.get(held.key)
        if found is None:
            pre = held.entry.preprocessing or self.manifest.base.preprocessing
            found = self._normalizers[held.key] = Normalizer.from_preprocessing(
                pre, shape[0], len(shape))
        return found

    def prepare_bank(self, tensors: Mapping[str, np.ndarray]
                     ) -> Mapping[str, np.ndarray] | DeviceSlots:
        """A routing table's bank tensors (K, ...) in the form the engine runs."""
        return self.engine.prepare_bank(tensors)

    def pin(self, keys: set[Key]) -> None:
        """Adapters that routes use: never dropped from memory."""
        self.cache.pin(keys)

    def prune(self, name: str, keep: int, in_use: set[Key]) -> list[Key]:
        """Delete accepted versions of `name` older than its `keep` newest, except those in
        `in_use` (routed, or in a rollback history) and the bundle's; the deleted keys."""
        with self._lock:
            versions = sorted((h for (n, _), h in self.held.items() if n == name),
                              key=lambda h: h.entry.version)
        gone = [h for h in versions[:-keep] if h.source != "bundle" and h.key not in in_use]
        gone = [h for h in gone if self._delete_files(*h.key, h.path)]
        for held in gone:
            self._forget(held.key)
        return [h.key for h in gone]

    def revoke(self, name: str, version: int, *, reason: str, signer: str
               ) -> HeldAdapter | None:
        """Withdraw `name` v`version`: recorded first (a crash after that still keeps it
        out), then dropped from memory and, unless the bundle holds it, deleted from disk.
        The held adapter it was, or None when it was not held (revoked in advance)."""
        with self._lock:
            held = self.held.get((name, version))
        self.revoked.add(name, version, reason=reason, signer=signer,
                         sha256=held.entry.sha256 if held else None)
        if held is not None:
            if held.source != "bundle":
                self._delete_files(name, version, held.path)
            self._forget(held.key)
        log.warning("revoked adapter %s v%d (%s)", name, version, reason)
        return held

    def _delete_files(self, name: str, version: int, path: Path) -> bool:
        stem = file_stem(name, version)
        try:  # the header first: without it a file is never held again
            (self.dir / f"{stem}.json").unlink(missing_ok=True)
            path.unlink(missing_ok=True)
        except OSError as exc:
            log.warning("cannot delete %s from %s: %s", stem, self.dir, exc)
            return False
        return True

    def _forget(self, key: Key) -> None:
        with self._lock:
            self.held.pop(key, None)
        self.cache.drop(key)
        self._normalizers.pop(key, None)

    def _load(self, path: Path):
        return read_adapter_arrays(path) if self.bank is not None else \
            self.engine.load_adapter(path)

    # -- intake -----------------------------------------------------------------------------
    def accept(self, data: bytes, source: str, expect_name: str | None = None
               ) -> tuple[HeldAdapter, bool]:
        """Run the check chain on an envelope; (held adapter, False) when this exact
        version is already held. Raises AdapterRejected with the reason."""
        header, body = unpack(data, self.max_bytes + MAX_HEADER + 12)
        if len(body) > self.max_bytes:
            raise AdapterRejected(f"adapter of {len(body)} bytes exceeds "
                                  f"limits.max_adapter_bytes = {self.max_bytes}")
        signer = verify(header, self.trusted, self.require_signed)
        entry = self._shared(check_header(header, self.manifest, expect_name))
        check_card(entry, self.policy)
        same = self._check_version(entry)
        if same is not None:
            return same, False
        held = self._check_and_persist(entry, body, source, signer)
        with self._lock:
            self.held[held.key] = held
        log.info("accepted adapter %s v%d from %s (%d bytes, signer %s)", entry.name,
                 entry.version, source, held.size, signer)
        return held, True

    def _shared(self, entry: AdapterEntry) -> AdapterEntry:
        """Versions of one adapter mostly repeat classes, statistics and targets: keep one
        copy of each (a hundred versions held cost a few KiB each otherwise)."""
        with self._lock:
            other = next((h.entry for (n, _), h in self.held.items() if n == entry.name), None)
        if other is None:
            return entry
        fields = ("class_names", "preprocessing", "targets", "metrics")
        same = {f: getattr(other, f) for f in fields if getattr(other, f) == getattr(entry, f)}
        return entry.model_copy(update=same) if same else entry

    def _check_version(self, entry: AdapterEntry) -> HeldAdapter | None:
        revoked = self.revoked.get((entry.name, entry.version))
        if revoked is not None:
            raise AdapterRejected(f"{entry.name} version {entry.version} was revoked "
                                  f"({revoked.get('reason') or 'no reason given'}); publish "
                                  f"version {self._newest(entry.name) + 1}")
        with self._lock:
            existing = self.held.get((entry.name, entry.version))
        newest = self._newest(entry.name)
        if existing is not None:
            if existing.entry.sha256 == entry.sha256:
                return existing
            raise AdapterRejected(f"{entry.name} version {entry.version} is already held with "
                                  f"other content; publish it as version {newest + 1}")
        if entry.version < newest:
            raise AdapterRejected(f"{entry.name} version {entry.version} is older than the "
                                  f"newest held version {newest}; publish version {newest + 1}")
        return None

    def _newest(self, name: str) -> int:
        """The newest version of `name` held or revoked: uploads must be newer."""
        with self._lock:
            held = max((v for n, v in self.held if n == name), default=0)
        return max(held, self.revoked.newest(name))

    def _check_and_persist(self, entry: AdapterEntry, body: bytes, source: str,
                           signer: str) -> HeldAdapter:
        """Tensor checks and the warm-up on a temp file in the store; renamed into place
        only when every check passed."""
        stem = file_stem(entry.name, entry.version)
        try:
            fd, tmp_name = tempfile.mkstemp(prefix=f".{stem}.", suffix=".tmp", dir=self.dir)
        except OSError as exc:
            raise self._storage_error(exc) from None
        tmp = Path(tmp_name)
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(body)
                fh.flush()
                os.fsync(fh.fileno())
            arrays = read_adapter_arrays(tmp)
            check_tensors(entry, arrays, self._slots)
            value = arrays if self.bank is not None else self.engine.load_adapter(tmp, arrays)
            check_outputs(entry, self._warm_up(value), self._reference, self._tolerance())
            path = self.dir / entry.file
            os.replace(tmp, path)
        except AdapterError as exc:
            tmp.unlink(missing_ok=True)
            raise AdapterRejected(str(exc).replace(str(tmp), "adapter body")) from None
        except OSError as exc:  # disk full, read-only: the gateway's problem, not the adapter's
            tmp.unlink(missing_ok=True)
            raise self._storage_error(exc) from None
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        accepted = time.time()
        meta = {**entry.model_dump(mode="json"), "source": source, "signer": signer,
                "accepted": accepted, "size": len(body)}
        try:  # the header last: without it the file is not held after a restart
            atomic_write(self.dir / f"{stem}.json", json.dumps(meta, indent=1).encode())
        except OSError as exc:
            path.unlink(missing_ok=True)
            raise self._storage_error(exc) from None
        held = HeldAdapter(entry=entry, path=path, size=len(body), source=source,
                           signer=signer, accepted=accepted)
        self.cache.put(held.key, value, held.size)
        return held

    def _storage_error(self, exc: OSError) -> StorageError:
        return StorageError(f"device.state_dir: cannot store the adapter in {self.dir} "
                            f"({exc.strerror or exc})")

    def _tolerance(self) -> float:
        return logits_tolerance(self.manifest.base.precision, self.engine.provider,
                                self.engine.fp16)

    def _warm_up(self, value) -> np.ndarray:
        """One run on the bundle's reference samples (N, *sample); the outputs must be finite."""
        x = self._reference
        try:
            if self.bank is not None:
                bank = AdapterBank(self.bank.defaults, self.bank.size)
                bank.load(0, value)
                out = self.engine.run(x, feeds=bank.feeds(np.zeros(len(x), np.int64)))
            else:
                out = self.engine.run(x, value)
        except EdgeError:
            raise
        except Exception as exc:  # onnxruntime raises untyped errors
            raise AdapterRejected(f"warm-up inference failed ({self.engine.failure(exc)})"
                                  ) from None
        if not np.isfinite(out).all():
            raise AdapterRejected("warm-up inference on the bundle's reference samples gave "
                                  "NaN or Inf outputs")
        return out

    def _reference_inputs(self) -> np.ndarray:
        x = read_reference_inputs(self.bundle, self.manifest)
        if x is None:
            log.warning("%s: no usable %s; warming adapters up on zeros", self.bundle,
                        REFERENCE_INPUTS)
            return np.zeros((1, *self.manifest.inputs[0].shape[1:]), np.float32)
        return x

    # -- what exists at start ---------------------------------------------------------------
    def _hold_bundle(self) -> None:
        for entry in self.manifest.adapters:
            if (entry.name, entry.version) in self.revoked:
                log.warning("bundle adapter %s v%d is revoked; not holding it", entry.name,
                            entry.version)
                continue
            path = self.bundle / entry.file
            if not path.is_file():
                raise AdapterError(f"{path}: listed in the manifest but missing")
            size = path.stat().st_size
            if size > self.max_bytes:
                log.warning("bundle adapter %s is %d bytes, over limits.max_adapter_bytes; "
                            "held anyway (the bundle is trusted)", entry.name, size)
            if sha256_file(path) != entry.sha256:
                raise AdapterError(f"{path}: sha256 does not match the manifest; the adapter "
                                   "file was changed")
            try:
                check_card(entry, self.policy)
            except AdapterRejected as exc:
                raise IncompatibleBundle(f"{self.bundle}: adapter {entry.name} v{entry.version}"
                                         f": {exc}") from None
            self.held[(entry.name, entry.version)] = HeldAdapter(
                entry=entry, path=path, size=size, source="bundle", signer="bundle",
                accepted=path.stat().st_mtime)

    def _hold_persisted(self) -> None:
        """Adapters accepted before a restart. One that no longer checks out (edited on
        disk, or for another base after a bundle update) is skipped with a warning."""
        found, problems = persisted_adapters(self.dir, self.manifest, self.policy)
        for line in problems:
            log.warning("%s", line)
        for entry, path, meta in found:
            if (entry.name, entry.version) in self.revoked:
                if not self.follower:
                    self._delete_files(entry.name, entry.version, path)  # revoked, a crash
                continue
            held = self._persisted(entry, path, meta)
            self.held.setdefault(held.key, held)
        if self.follower:  # a .tmp may be the leader's intake in progress
            return
        for tmp in self.dir.glob(".*.tmp"):  # a crash in the middle of an intake
            tmp.unlink(missing_ok=True)

    def _persisted(self, entry: AdapterEntry, path: Path, meta: dict) -> HeldAdapter:
        return HeldAdapter(entry=self._shared(entry), path=path, size=path.stat().st_size,
                           source=str(meta.get("source", "mqtt")),
                           signer=str(meta.get("signer", "unsigned")),
                           accepted=float(meta.get("accepted", 0.0)))

    def refresh(self) -> None:
        """A follower worker's view of the leader's changes: hold what the leader accepted
        since, forget what it pruned or revoked (edge/workers/route_sync.py)."""
        self.revoked = Revocations.load(self.dir.parent)
        found, _ = persisted_adapters(self.dir, self.manifest, self.policy)
        on_disk = {(e.name, e.version): (e, path, meta) for e, path, meta in found
                   if (e.name, e.version) not in self.revoked}
        with self._lock:
            held = dict(self.held)
        for key, adapter in held.items():
            if key in self.revoked or (adapter.source != "bundle" and key not in on_disk):
                self._forget(key)
        for key, (entry, path, meta) in on_disk.items():
            if key not in held:
                adapter = self._persisted(entry, path, meta)
                with self._lock:
                    self.held[key] = adapter

def persisted_adapters(directory: Path, manifest: Manifest, policy: CardPolicy | None = None
                       ) -> tuple[list[tuple[AdapterEntry, Path, dict]], list[str]]:
    """Accepted adapters under `directory` (their header .json, entry and file) that still
    check out against `manifest` and `policy` (it may have changed since), and one line for
    each that does not. Reads only."""
    found, problems = [], []
    for meta_path in sorted(directory.glob("*.json")):
        try:
            meta = json.loads(meta_path.read_text())
            if not isinstance(meta, dict):
                raise ValueError("not a JSON object")
            entry = AdapterEntry.model_validate(
                {k: v for k, v in meta.items() if k in AdapterEntry.model_fields})
            path = directory / entry.file
            if sha256_file(path) != entry.sha256:
                raise AdapterError("sha256 differs from its header")
            if entry.base_fingerprint != manifest.base.weights_fingerprint:
                raise AdapterError("it was accepted for another base")
            check_card(entry, policy or CardPolicy())
        except (OSError, ValueError, ValidationError, AdapterError) as exc:
            problems.append(f"not holding {meta_path.name}: {exc}")
            continue
        found.append((entry, path, meta))
    return found, problems
