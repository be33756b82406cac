"""The checks an adapter passes before a gateway holds it, as pure functions of the envelope
header, the adapter's tensors, its warm-up outputs and the running bundle (edge/adapters.py
runs them in order; the first failure is the reason sent back)."""

from __future__ import annotations

import numpy as np
from pydantic import ValidationError

from .bundle import AdapterEntry, Manifest, Slot, rows_sha256
from .card_policy import CardPolicy
from .contract import Normalizer, Preprocessing, name_problem
from .errors import AdapterRejected, IncompatibleBundle, validation_problem

MAX_VERSION = 2**31 - 1


def file_stem(name: str, version: int) -> str:
    return f"{name}.v{version}"


def check_header(header: dict, manifest: Manifest, expect_name: str | None) -> AdapterEntry:
    """The manifest-style entry an envelope header describes, checked against the running
    bundle: name, version range, base fingerprint, fields (a drift profile's values through
    its schema), kind, rank, classes, preprocessing, the drift profile's channels and
    classes."""
    name, version = header["name"], header["version"]
    problem = name_problem(name, "adapter")
    if problem:
        raise AdapterRejected(problem)
    if expect_name is not None and name != expect_name:
        raise AdapterRejected(f"envelope names adapter {name!r}, the topic {expect_name!r}")
    if not 1 <= version <= MAX_VERSION:
        raise AdapterRejected(f"adapter version {str(version)[:24]} is not within "
                              f"1..{MAX_VERSION}")
    if header["base_fingerprint"] != manifest.base.weights_fingerprint:
        raise AdapterRejected(
            f"adapter was trained on base {header['base_fingerprint'][:12]}…; this "
            f"gateway runs base {manifest.base.weights_fingerprint[:12]}…")
    try:
        entry = AdapterEntry.model_validate(
            {k: header.get(k) for k in AdapterEntry.model_fields if header.get(k) is not None}
            | {"file": f"{file_stem(name, version)}.onnx_adapter",
               "targets": header.get("targets") or []})
    except ValidationError as exc:
        raise AdapterRejected(f"envelope header: {validation_problem(exc)}") from None
    check_fit(entry, manifest)
    return entry


def check_fit(entry: AdapterEntry, manifest: Manifest) -> None:
    kinds = {s.kind for s in manifest.slots} - {"full"}
    if entry.kind not in kinds:
        raise AdapterRejected(f"a {entry.kind} adapter does not fit this base (its slots "
                              f"are {sorted(kinds) or 'none'})")
    if not 1 <= entry.rank <= manifest.max_rank:
        raise AdapterRejected(f"adapter rank {entry.rank} is not within 1.."
                              f"{manifest.max_rank} (the bundle's slot rank R)")
    if not 1 <= len(entry.class_names) <= manifest.num_classes:
        raise AdapterRejected(f"adapter has {len(entry.class_names)} classes; the model "
                              f"outputs 1..{manifest.num_classes}")
    pre = entry.preprocessing
    shape = tuple(manifest.inputs[0].shape[1:])  # the sample: (F,), (C, L) or (C, H, W)
    if pre is not None and (len(pre.mean) != shape[0] or len(pre.std) != shape[0]
                            or pre.sample_shape != shape):
        raise AdapterRejected(f"adapter preprocessing is for {_samples(pre)}; the model "
                              f"takes {' x '.join(map(str, shape))}")
    try:
        Normalizer.from_preprocessing(pre, shape[0], len(shape))
    except IncompatibleBundle as exc:
        raise AdapterRejected(f"adapter preprocessing: {exc}") from None
    check_profile(entry, shape[0], manifest.features)


def _samples(pre: Preprocessing) -> str:
    """'6 channels x 100 samples' (a window record), 'samples of 1 x 8 x 8' (others)."""
    if pre.shape is None:
        return f"{len(pre.mean)} channels x {pre.length} samples"
    return f"samples of {' x '.join(map(str, pre.shape))}"


def check_profile(entry: AdapterEntry, channels: int, features: int | None = None) -> None:
    """The adapter's drift profile (when it has one; its schema already checked values are
    finite and histograms well formed) describes this model: its channels, its classes, its
    `features` penultimate features (None: the graph outputs none)."""
    profile = entry.drift_profile
    problem = None if profile is None else profile.problem(channels, entry.class_names,
                                                           features)
    if problem:
        raise AdapterRejected(f"adapter {problem}")


def check_card(entry: AdapterEntry, policy: CardPolicy) -> None:
    """The adapter's card (its schema already checked the SPDX ids) describes the base it
    was trained on, and keeps to [adapters.policy]: licences allowed, required fields set."""
    card = entry.card
    recorded = None if card is None else card.base.fingerprint
    if recorded is not None and recorded != entry.base_fingerprint:
        raise AdapterRejected(f"the adapter's card names base {recorded[:12]}…, its envelope "
                              f"base {entry.base_fingerprint[:12]}…")
    problem = policy.adapter_problem(card)
    if problem:
        raise AdapterRejected(f"adapters.policy: {problem}")


def check_tensors(entry: AdapterEntry, arrays: dict[str, np.ndarray],
                  slots: dict[str, Slot]) -> None:
    """Names, shapes and dtypes against the bundle's slots; all values finite."""
    if not arrays:
        raise AdapterRejected("adapter holds no tensors")
    for name, value in arrays.items():
        slot = slots.get(name)
        if slot is None:
            raise AdapterRejected(f"tensor {name[:120]!r} has no slot in this base")
        if slot.kind not in ("full", entry.kind):
            raise AdapterRejected(f"tensor {name} fills a {slot.kind} slot; the adapter "
                                  f"is {entry.kind}")
        if list(value.shape) != slot.shape:
            raise AdapterRejected(f"tensor {name} has shape {list(value.shape)}; its slot "
                                  f"holds {slot.shape}")
        if value.dtype != np.dtype(slot.dtype):
            raise AdapterRejected(f"tensor {name} is {value.dtype}; its slot is {slot.dtype}")
        if not np.isfinite(value).all():
            raise AdapterRejected(f"tensor {name} holds NaN or Inf values")


def check_outputs(entry: AdapterEntry, out: np.ndarray, reference: np.ndarray,
                  limit: float) -> None:
    """The warm-up logits (N, K) against what the exporter recorded for the same rows:
    catches an adapter that is finite but wrong (a huge weight that saturates a line, a
    file built for another preprocessing or precision), however it was signed."""
    want = entry.reference_logits
    if want is None:
        raise AdapterRejected("the envelope records no expected outputs "
                              "(reference_logits): export the adapter again with "
                              "`edge-export add-adapter` and sign it again")
    if entry.reference_sha256 != rows_sha256(reference):
        raise AdapterRejected("the expected outputs were recorded for other reference "
                              "inputs than this bundle's: the adapter was exported "
                              "against another bundle")
    want = np.asarray(want, dtype=np.float64)  # (N, classes)
    classes = len(entry.class_names)
    if want.shape != (len(out), classes):
        raise AdapterRejected(f"expected outputs are {list(want.shape)}; the reference "
                              f"inputs give {[len(out), classes]}")
    diff = float(np.max(np.abs(out[:, :classes] - want)))
    if not diff <= limit:
        raise AdapterRejected(
            f"the adapter does not reproduce the outputs its exporter recorded: max "
            f"|difference| {diff:.3g} > {limit:g} on the bundle's reference inputs (a "
            "damaged or mismatched adapter, or one built for another preprocessing or "
            "precision)")
