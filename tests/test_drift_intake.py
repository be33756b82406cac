"""Drift profiles in adapter envelopes (issue 14), end to end through a real Mosquitto and a
real gateway (an in-process Service): `edge-export push` carries the adapter's profile in
the signed header, the gateway stores it with the adapter and still holds it after a
restart; a profile with NaN, wrong shapes, other channels, other classes or feature
statistics that are not finite, not orthonormal or of another width is refused at intake
with a one-line reason; a profile altered after signing breaks the signature; an
envelope from before profiles is still taken.

The workstation side is test_push.py's: a copy of the gateway's bundle (trained on real
BasicMotions data, tests/reference_bundle.py: its adapter and base carry profiles) with
`line-a` v2 added. Torch-free: the gateway run uses it with the checked-in bundles.
"""

from __future__ import annotations

import base64
import math
from collections.abc import Callable
from pathlib import Path

import pytest
from test_push import DEVICE, gateway, keys, workstation  # noqa: F401 (fixtures)

from edge.bundle import read_manifest
from edge.envelope import MAX_HEADER, canonical, key_id, pack, unpack
from edge.errors import AdapterRejected, ExportError
from export.fleet.push import push
from export.signing import envelope_bytes, envelope_for, load_private_key

Edit = Callable[[dict], None]


def rebuilt(data: bytes, edit: Edit, key: Path | None) -> bytes:
    """The envelope with its header edited, signed again with `key` (None: the old
    signature kept, as a tamperer would have to)."""
    header, body = unpack(data, len(data))
    edit(header)
    if key is not None:
        private = load_private_key(key)
        header["key_id"] = key_id(private.public_key())
        header["signature"] = base64.b64encode(private.sign(canonical(header))).decode()
    return pack(header, body)


def push_file(data: bytes, path: Path, mosquitto) -> object:
    path.write_bytes(data)
    return push(envelope=path, device=DEVICE, broker=f"127.0.0.1:{mosquitto.port}")


def test_a_pushed_profile_reaches_the_gateway_and_survives_a_restart(
        gateway, workstation, keys, mosquitto):  # noqa: F811 (test_push's fixtures)
    want = read_manifest(workstation).adapter("line-a", 2).drift_profile
    assert want is not None and want.channels == 6  # BasicMotions: 6 channels
    svc = gateway()
    result = push(bundle=workstation, name="line-a", key=keys[0], device=DEVICE,
                  broker=f"127.0.0.1:{mosquitto.port}")
    assert (result.version, result.signed, result.already_held) == (2, True, False)
    assert svc.store.resolve("line-a", 2).entry.drift_profile == want
    svc.stop(5)
    again = gateway()  # the same state_dir: it holds what the first one accepted
    held = again.store.resolve("line-a", 2)
    assert held.source == "mqtt" and held.entry.drift_profile == want


def _nan(header: dict) -> None:
    header["drift_profile"]["top_score"]["edges"][0] = math.nan


def _shapes(header: dict) -> None:
    header["drift_profile"]["inputs"]["window_mean"][0]["edges"].pop()  # k-1 edges, k shares


def _channels(header: dict) -> None:
    inputs = header["drift_profile"]["inputs"]
    inputs["window_mean"].pop()
    inputs["window_std"].pop()


def _classes(header: dict) -> None:
    header["drift_profile"]["classes"]["names"].reverse()


def _feature_nan(header: dict) -> None:
    header["drift_profile"]["features"]["class_means"][0][0] = math.nan


def _feature_width(header: dict) -> None:  # statistics of another model's features
    features = header["drift_profile"]["features"]
    features["dim"] -= 1
    for row in features["class_means"]:
        row.pop()
    features["basis"], features["variances"] = [], []


def _feature_basis(header: dict) -> None:  # not orthonormal: distances could go negative
    basis = header["drift_profile"]["features"]["basis"]
    basis[1] = list(basis[0])


def _fewer_windows(header: dict) -> None:
    header["drift_profile"]["n_windows"] += 1


BAD = [  # (edit, signed again, the gateway's reason)
    (_nan, True, "envelope header: drift_profile.top_score.edges: Value error, edges must be "
                 "finite numbers"),
    (_shapes, True, "envelope header: drift_profile.inputs.window_mean.0: Value error, 8 "
                    "edges need 9 shares, got 10"),
    (_channels, True, "adapter drift profile has 5 channel(s), the model 6"),
    (_classes, True, "adapter drift profile's classes are not the model's"),
    (_feature_nan, True, "envelope header: drift_profile.features: Value error, feature "
                         "statistics must be finite numbers"),
    (_feature_width, True, "adapter drift profile has 31 features per window, the model 32"),
    (_feature_basis, True, "envelope header: drift_profile.features: Value error, basis rows "
                           "must be orthonormal"),
    (_fewer_windows, False, "adapter signature is invalid"),
]


def test_bad_profiles_are_refused_at_intake_with_the_reason(
        gateway, workstation, keys, mosquitto, tmp_path):  # noqa: F811
    svc = gateway()
    signed = envelope_bytes(bundle=workstation, name="line-a", key=keys[0])
    for edit, sign, reason in BAD:
        data = rebuilt(signed, edit, keys[0] if sign else None)
        with pytest.raises(AdapterRejected) as refused:
            push_file(data, tmp_path / f"{edit.__name__}.envelope", mosquitto)
        message = str(refused.value)
        assert message.startswith(f"device {DEVICE} refused line-a v2: {reason}"), message
        assert "\n" not in message
        assert ("line-a", 2) not in svc.store.held
    # the same adapter with its profile intact is then taken
    assert push_file(signed, tmp_path / "good.envelope", mosquitto).version == 2


def test_an_envelope_without_a_profile_is_still_taken(
        gateway, workstation, keys, mosquitto, tmp_path):  # noqa: F811
    svc = gateway()
    old = rebuilt(envelope_bytes(bundle=workstation, name="line-a", key=keys[0]),
                  lambda header: header.pop("drift_profile"), keys[0])
    assert "drift_profile" not in unpack(old, len(old))[0]
    assert push_file(old, tmp_path / "old.envelope", mosquitto).version == 2
    assert svc.store.resolve("line-a", 2).entry.drift_profile is None


def test_an_envelope_a_gateway_could_not_read_is_not_built(workstation):  # noqa: F811
    """A profile of thousands of channels would push the header past the gateway's limit:
    the exporter says so instead of building an envelope every gateway refuses unread."""
    entry = read_manifest(workstation).adapter("line-a", 2)
    inputs = entry.drift_profile.inputs
    wide = entry.drift_profile.model_copy(update={"inputs": inputs.model_copy(update={
        "window_mean": inputs.window_mean * 500, "window_std": inputs.window_std * 500})})
    body = (workstation / entry.file).read_bytes()
    with pytest.raises(ExportError, match=f"exceeds {MAX_HEADER} bytes"):
        envelope_for(entry.model_copy(update={"drift_profile": wide}), body)
    assert unpack(envelope_for(entry, body), 1 << 30)[0]["drift_profile"]["n_windows"] == 40
