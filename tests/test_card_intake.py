"""Cards at the gateway (edge/card.py, edge/card_policy.py): signed with the adapter, held
with every version, checked against [adapters.policy] at intake and at start. Torch-free:
the bundles are the reference ones (built, or unpacked in the gateway run) with cards
written into their manifests as `edge-export attach` writes them; the workstation side of
cards is tests/test_cards.py."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from adapter_versions import derive_version, envelope
from click.testing import CliRunner
from reference_bundle import sample_windows
from test_runtime import WAIT_S, Collector, Publisher

from edge.adapters import AdapterStore
from edge.bundle import read_manifest, write_manifest
from edge.card import Card
from edge.config import load_config
from edge.engine import Engine
from edge.envelope import pack, unpack
from edge.errors import AdapterRejected, ConfigError, IncompatibleBundle
from edge.service import Service
from export.cli import main as export_main
from export.demo.local_broker import write_runtime_config
from export.signing import envelope_for, keygen

DEVICE = "gw-test"
DATA = "9" * 64  # a data fingerprint
POLICY = {"allowed_licences": ["Apache-2.0", "MIT"],
          "required_fields": ["author", "licence", "data.fingerprint"]}


def card(fingerprint: str, **fields) -> Card:
    """An adapter's card as `train` and `attach` write it, with `fields` changed."""
    doc = {"licence": "Apache-2.0", "author": "ana", "created": "2026-01-05T10:00:00Z",
           "tool_version": "0.1.0", "command": "edge-export train ...",
           "base": {"name": "tiny", "licence": "Apache-2.0", "fingerprint": fingerprint},
           "data": {"description": "BasicMotions", "fingerprint": DATA, "n_train": 40,
                    "n_test": 40, "eval_split": "test"},
           "metrics": {"accuracy": 0.9}, "intended_use": "motion classes of line a"}
    for key, value in fields.items():
        part, _, sub = key.partition("__")
        if sub:
            doc[part] = {**doc[part], sub: value}
        elif value is None:
            doc.pop(key, None)
        else:
            doc[key] = value
    return Card.model_validate(doc)


def carded_bundle(source: Path, out: Path, base_licence: str = "Apache-2.0") -> Path:
    """A copy of `source` whose base and adapters carry cards."""
    shutil.copytree(source, out)
    manifest = read_manifest(out)
    fp = manifest.base.weights_fingerprint
    base = Card(licence=base_licence, base={"name": "tiny", "licence": base_licence,
                                            "fingerprint": fp})
    manifest.base.card = base
    manifest.adapters = [a.model_copy(update={"card": card(fp)}) for a in manifest.adapters]
    write_manifest(out, manifest)
    return out


def with_policy(config: Path, **policy) -> Path:
    """`config` with an [adapters.policy] table."""
    lines = "".join(f"{k} = {json.dumps(v)}\n" for k, v in policy.items())
    config.write_text(config.read_text() + f"[adapters.policy]\n{lines}\n")
    return config


@pytest.fixture
def keys(tmp_path) -> tuple[Path, Path]:
    return keygen(out=tmp_path / "keys" / "signing")


@pytest.fixture
def bundle(basicmotions_bundle, tmp_path) -> Path:
    return carded_bundle(basicmotions_bundle, tmp_path / "carded")


@pytest.fixture
def store(bundle, keys, tmp_path, mosquitto):
    """`store(**policy)` -> an AdapterStore on the carded bundle trusting `keys`."""
    def make(**policy) -> AdapterStore:
        path = write_runtime_config(tmp_path, port=mosquitto.port, bundle=bundle,
                                    adapters={"trusted_keys": [str(keys[1])]})
        cfg = load_config(with_policy(path, **policy) if policy else path)
        manifest = read_manifest(bundle)
        return AdapterStore.open(cfg, bundle, manifest, Engine(bundle / manifest.base.file))
    return make


def version(bundle: Path, tmp_path: Path, n: int, **fields):
    """line-a version n with a card (changed by `fields`; card=None: none at all)."""
    entry, path = derive_version(bundle, "line-a", n, tmp_path / "versions")
    fp = entry.base_fingerprint
    given = fields.pop("card", "default")
    update = {"card": card(fp, **fields) if given == "default" else given}
    return entry.model_copy(update=update), path


# --------------------------------------------------------------------------------------------
# Signed, held, persisted
# --------------------------------------------------------------------------------------------

def test_card_is_signed_and_held_with_its_version(store, bundle, keys, tmp_path):
    gateway = store(**POLICY)
    entry, path = version(bundle, tmp_path, 2, author="bo", licence="MIT")
    data = envelope(entry, path, keys[0])
    header, _ = unpack(data, 1 << 22)
    assert Card.model_validate(header["card"]) == entry.card
    held, new = gateway.accept(data, "test")
    assert new and held.entry.card == entry.card
    essentials = {h["version"]: h["card"] for h in gateway.describe()}
    assert essentials[2] == {"licence": "MIT", "author": "bo", "data_fingerprint": DATA,
                             "created": "2026-01-05T10:00:00Z"}
    assert essentials[1]["author"] == "ana"  # the bundle's version carries its own
    again = store(**POLICY)  # a restart holds the same card
    assert again.resolve("line-a", 2).entry.card == entry.card


def test_a_tampered_card_is_refused_by_the_signature(store, bundle, keys, tmp_path):
    gateway = store()
    entry, path = version(bundle, tmp_path, 2)
    header, body = unpack(envelope(entry, path, keys[0]), 1 << 22)
    header["card"] = {**header["card"], "licence": "MIT", "author": "mallory"}
    with pytest.raises(AdapterRejected, match="^adapter signature is invalid$"):
        gateway.accept(pack(header, body), "test")
    assert [h["version"] for h in gateway.describe()] == [1]


# --------------------------------------------------------------------------------------------
# The policy at intake: one clear line each
# --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("fields, reason", [
    ({"author": None}, "adapters.policy: its card has no author, which adapters.policy."
     "required_fields asks for"),
    ({"data__fingerprint": None}, "its card has no data.fingerprint"),
    ({"licence": "CC-BY-NC-4.0"}, "adapters.policy: its licence CC-BY-NC-4.0 is not in "
     "adapters.policy.allowed_licences (Apache-2.0, MIT)"),
    ({"licence": "MIT AND GPL-3.0-only"}, "its licence MIT AND GPL-3.0-only is not in"),
    ({"base__licence": "CC-BY-NC-4.0"}, "its base's licence CC-BY-NC-4.0 is not in"),
    ({"card": None}, "the adapter carries no card, and adapters.policy requires one"),
], ids=["no-author", "no-data-fingerprint", "licence", "and", "base-licence", "no-card"])
def test_policy_refusals_name_the_reason(store, bundle, keys, tmp_path, fields, reason):
    gateway = store(**POLICY)
    entry, path = version(bundle, tmp_path, 2, **fields)
    with pytest.raises(AdapterRejected) as refused:
        gateway.accept(envelope(entry, path, keys[0]), "test")
    assert reason in str(refused.value) and "\n" not in str(refused.value)
    assert [h["version"] for h in gateway.describe()] == [1]


def test_licence_alternatives_and_a_policy_free_gateway(store, bundle, keys, tmp_path):
    gateway = store(**POLICY)
    entry, path = version(bundle, tmp_path, 2, licence="GPL-3.0-only OR MIT")
    assert gateway.accept(envelope(entry, path, keys[0]), "test")[1]  # MIT suffices
    free = store()  # no policy: any card, or none (envelopes of older exporters)
    entry, path = version(bundle, tmp_path, 3, card=None)
    assert free.accept(envelope(entry, path, keys[0]), "test")[1]


def _signed_header(entry, path, key, **card_changes) -> bytes:
    """An envelope whose card holds what no exporter writes, signed all the same."""
    from edge.envelope import canonical, key_id
    from export.signing import load_private_key

    header, body = unpack(envelope_for(entry, path.read_bytes()), 1 << 22)
    header["card"] = {**header["card"], **card_changes}
    private = load_private_key(key)
    header["key_id"] = key_id(private.public_key())
    import base64
    header["signature"] = base64.b64encode(private.sign(canonical(header))).decode()
    return pack(header, body)


@pytest.mark.parametrize("changes, reason", [
    ({"licence": "Foo-1.0"}, "envelope header: card.licence: Value error, Foo-1.0 is not an "
     "SPDX licence id"),
    ({"licence": "LicenseRef-acme"}, "is a LicenseRef: its text must travel with it"),
    ({"created": "yesterday"}, "card.created: Value error, not an ISO 8601 time"),
    ({"base": {"fingerprint": "0" * 64}}, "the adapter's card names base 000000000000…"),
], ids=["unknown-spdx", "licenceref-without-text", "created", "other-base"])
def test_cards_no_exporter_writes_are_refused(store, bundle, keys, tmp_path, changes, reason):
    gateway = store()
    entry, path = version(bundle, tmp_path, 2)
    with pytest.raises(AdapterRejected) as refused:
        gateway.accept(_signed_header(entry, path, keys[0], **changes), "test")
    assert reason in str(refused.value) and "\n" not in str(refused.value)


def test_a_tighter_policy_drops_persisted_versions_that_break_it(store, bundle, keys, tmp_path,
                                                                   caplog):
    entry, path = version(bundle, tmp_path, 2, licence="MIT")
    store().accept(envelope(entry, path, keys[0]), "test")
    strict = store(allowed_licences=["Apache-2.0"])
    assert [h["version"] for h in strict.describe()] == [1]
    assert "not holding line-a.v2.json: adapters.policy: its licence MIT" in caplog.text


# --------------------------------------------------------------------------------------------
# The base, the config
# --------------------------------------------------------------------------------------------

def test_a_base_with_a_disallowed_licence_does_not_start(basicmotions_bundle, mosquitto,
                                                         tmp_path):
    bundle = carded_bundle(basicmotions_bundle, tmp_path / "nc", base_licence="CC-BY-NC-4.0")
    config = with_policy(write_runtime_config(tmp_path, port=mosquitto.port, bundle=bundle),
                         allowed_licences=["Apache-2.0"])
    with pytest.raises(IncompatibleBundle) as refused:
        Service(config)
    assert str(refused.value).endswith(
        f"adapters.policy: {bundle}: the base's licence CC-BY-NC-4.0 is not in "
        "adapters.policy.allowed_licences (Apache-2.0)")
    from edge.cli import main as runtime_main

    result = CliRunner().invoke(runtime_main, ["run", "--config", str(config)])
    assert result.exit_code == IncompatibleBundle.exit_code
    assert result.stderr.count("\n") == 1 and "CC-BY-NC-4.0 is not in" in result.stderr
    bare = tmp_path / "bare"  # a bundle from before cards: its base licence is unknown
    shutil.copytree(basicmotions_bundle, bare)
    manifest = read_manifest(bare)
    manifest.base.card = None
    write_manifest(bare, manifest)
    with pytest.raises(IncompatibleBundle, match="the base's licence is not recorded"):
        Service(config, bundle_dir=bare)


def test_a_bundle_adapter_that_breaks_the_policy_does_not_start(bundle, mosquitto, tmp_path):
    config = with_policy(write_runtime_config(tmp_path, port=mosquitto.port, bundle=bundle),
                         required_fields=["limits"])
    with pytest.raises(IncompatibleBundle, match="adapter line-a v1: adapters.policy: its card "
                       "has no limits"):
        Service(config)


@pytest.mark.parametrize("policy, words", [
    ({"allowed_licences": ["Apache2"]}, "adapters.policy.allowed_licences[0]"),
    ({"required_fields": ["athor"]}, "not a card field"),
    ({"allowed": ["MIT"]}, "adapters.policy.allowed"),
])
def test_policy_config_errors_name_the_key(mosquitto, tmp_path, policy, words):
    config = with_policy(write_runtime_config(tmp_path, port=mosquitto.port, bundle=None),
                         **policy)
    with pytest.raises(ConfigError) as bad:
        load_config(config)
    assert words in str(bad.value)


# --------------------------------------------------------------------------------------------
# Pushed over MQTT: the retained state carries each card, results name the version
# --------------------------------------------------------------------------------------------

def test_push_holds_the_card_and_results_name_the_version(bundle, keys, mosquitto, tmp_path):
    workstation = tmp_path / "workstation"
    shutil.copytree(bundle, workstation)
    entry, path = version(workstation, tmp_path, 2, author="cy")
    shutil.copy(path, workstation / "adapters" / path.name)
    manifest = read_manifest(workstation)
    entry = entry.model_copy(update={"file": f"adapters/{path.name}"})
    write_manifest(workstation, manifest.model_copy(update={"adapters": [*manifest.adapters,
                                                                         entry]}))
    config = write_runtime_config(tmp_path, port=mosquitto.port, bundle=bundle,
                                  lines={"line-a": {"adapter": "line-a"}},
                                  adapters={"trusted_keys": [str(keys[1])]})
    svc = Service(with_policy(config, **POLICY))
    try:
        assert svc.start()
        result = CliRunner().invoke(export_main, [
            "push", "--bundle", str(workstation), "--name", "line-a", "--key", str(keys[0]),
            "--broker", f"{mosquitto.host}:{mosquitto.port}", "--device", DEVICE])
        assert result.exit_code == 0, result.stderr
        collector = Collector(mosquitto.port, (f"factory/{DEVICE}/adapters/state",
                                               "factory/line-a/inference"))
        assert collector.wait(lambda c: any(
            len(d["held"]) == 2 for d in c.docs("/adapters/state")), WAIT_S)
        state = collector.docs("/adapters/state")[-1]
        cards = {h["version"]: h["card"] for h in state["held"]}
        assert cards[2] == {"licence": "Apache-2.0", "author": "cy", "data_fingerprint": DATA,
                            "created": "2026-01-05T10:00:00Z"} and cards[1]["author"] == "ana"
        x, _, _ = sample_windows(1)
        pub = Publisher(mosquitto.port)
        pub.json("factory/line-a/sensors/imu", "traced", x[0])
        pub.close()
        assert collector.wait(lambda c: c.docs("/inference"), WAIT_S)
        (answer,) = collector.docs("/inference")
        collector.close()
        assert (answer["adapter"], answer["adapter_version"]) == ("line-a", 2)
        assert cards[answer["adapter_version"]]["author"] == "cy"  # the result's card
    finally:
        svc.stop(5)
