"""Cards on the workstation (export/cards.py): written by train / pilot / attach / add-adapter
from the flags, a card file and what was measured; kept in the PEFT directory (which `peft`
still loads), the manifest, the merged model and the signed envelope; shown by inspect.
Real data (GunPoint and ArrowHead from the sktime wheel) on a tiny base. The gateway side
is tests/test_card_intake.py."""

from __future__ import annotations

import copy
import json
import shlex
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from click.testing import CliRunner  # noqa: E402

from edge.bundle import read_manifest  # noqa: E402
from edge.card import Card  # noqa: E402
from edge.envelope import load_public_keys, pack, unpack, verify  # noqa: E402
from edge.errors import AdapterRejected, ConfigError  # noqa: E402
from export.cards import CardOptions, data_fingerprint, os_user  # noqa: E402
from export.cli import main  # noqa: E402
from export.data import load_dataset  # noqa: E402
from export.models import load_base, weights_fingerprint  # noqa: E402
from export.onnx.attach import add_adapter  # noqa: E402
from export.peft_io import read_adapter_dir  # noqa: E402
from export.signing import envelope_bytes, keygen  # noqa: E402
from export.train import train  # noqa: E402

LENGTH = 64
TINY = {"d_model": 16, "depth": 1, "heads": 2, "patch": 8, "length": LENGTH}
FAST = ["--epochs", "3", "--batch-size", "16", "--no-progress"]
LICENCE_TEXT = "Acme internal licence: use within Acme plants only.\n"


def cli(*args) -> tuple[int, str, str]:
    result = CliRunner().invoke(main, [str(a) for a in args])
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result.exit_code, result.stdout, result.stderr


def npz(tmp: Path, spec: str, n: int | None = None) -> Path:
    ds = load_dataset(spec, length=LENGTH)
    n = n or len(ds)
    path = tmp / f"{spec.split(':')[1]}_{spec.split(':')[2]}.npz"
    np.savez(path, X=ds.X[:n], y=np.asarray(ds.class_names)[ds.y[:n]],
             class_names=np.asarray(ds.class_names))
    return path


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> dict[str, Path]:
    """A tiny base pretrained on GunPoint (with its own card), and the data of a line."""
    tmp = tmp_path_factory.mktemp("cards")
    files = {"base_data": npz(tmp, "ucr:GunPoint:train"),
             "train": npz(tmp, "ucr:GunPoint:test", 60), "test": npz(tmp, "ucr:GunPoint:train")}
    train(data=files["base_data"], method="full", model_config=TINY, epochs=3, batch_size=16,
          progress=False, out=tmp / "base", card=CardOptions(
              author="base-team", licence="Apache-2.0", base_name="tiny-gunpoint",
              base_source="https://example.org/tiny-gunpoint", command="pretrain"))
    files["weights"] = tmp / "base" / "model.safetensors"
    files["root"] = tmp
    return files


@pytest.fixture(scope="module")
def adapter(work) -> Path:
    """A LoRA adapter trained by the CLI with every card option and a card file."""
    root = work["root"]
    (root / "acme.txt").write_text(LICENCE_TEXT)
    (root / "card.toml").write_text(
        'licence = "LicenseRef-acme-internal"\nlicence_file = "acme.txt"\n'
        'limits = "from the card file"\n[data]\ndescription = "press 7, spring shift"\n')
    code, out, err = cli(
        "train", "--weights", work["weights"], "--data", work["train"], "--test-data",
        work["test"], "--targets", "q,v", "--freeze-head", "--freeze-norms", *FAST,
        "--out", root / "line7", "--author", "ana", "--intended-use", "gun/no-gun on press 7",
        "--limits", "not for other presses", "--card", root / "card.toml")
    assert code == 0, err
    return root / "line7"


def test_base_card_describes_the_base_itself(work):
    meta = json.loads((work["weights"].with_name("edge_model.json")).read_text())
    card = Card.model_validate(meta["card"])
    fingerprint = weights_fingerprint(load_base("reference", weights=work["weights"]))
    assert (card.licence, card.base.licence) == ("Apache-2.0", "Apache-2.0")
    assert (card.base.name, card.base.fingerprint) == ("tiny-gunpoint", fingerprint)
    assert (card.author, card.command) == ("base-team", "pretrain")
    assert (card.data.n_train, card.data.n_test, card.data.eval_split) == (40, 10, "val")


def test_train_writes_the_card_into_the_peft_directory(work, adapter):
    card = Card.model_validate(read_adapter_dir(adapter).meta["card"])
    ds = load_dataset(work["train"], length=LENGTH)
    assert card.data.fingerprint == data_fingerprint(ds.X, ds.y, ds.class_names)
    assert (card.data.n_train, card.data.n_test, card.data.eval_split) == (60, 50, "test")
    assert card.data.description == "press 7, spring shift"  # the card file's
    assert (card.licence, card.licence_text) == ("LicenseRef-acme-internal", LICENCE_TEXT)
    assert (card.author, card.intended_use) == ("ana", "gun/no-gun on press 7")
    assert card.limits == "not for other presses"  # the flag wins over the card file
    assert (card.base.name, card.base.licence) == ("tiny-gunpoint", "Apache-2.0")
    assert card.base.fingerprint == read_adapter_dir(adapter).meta["base_fingerprint"]
    assert set(card.metrics) == {"accuracy", "test_accuracy", "train_accuracy"}
    words = shlex.split(card.command)
    assert words[:2] == ["edge-export", "train"] and "--author" in words
    assert card.created.endswith("Z") and card.tool_version


def test_peft_still_loads_a_directory_with_a_card(work, adapter):
    peft = pytest.importorskip("peft")
    from export.adapters import AdaptedModel
    from export.peft_io import load_adapter

    base = load_base("reference", weights=work["weights"]).eval()
    model = peft.PeftModel.from_pretrained(copy.deepcopy(base), str(adapter)).eval()
    ours = AdaptedModel(copy.deepcopy(base)).eval()
    back = load_adapter(ours, adapter)
    x = torch.from_numpy(load_dataset(work["test"], length=LENGTH).X[:4])
    with torch.no_grad():
        assert torch.allclose(model(x), ours(x), atol=1e-5)
    assert Card.model_validate(back.meta["card"]).author == "ana"


@pytest.fixture(scope="module")
def bundle(work, adapter) -> Path:
    out = work["root"] / "bundle"
    code, _, err = cli("attach", "--weights", work["weights"], "--adapter", adapter,
                       "--name", "line7", "--out", out, "--base-source", "hub:acme/tiny")
    assert code == 0, err
    return out


def test_attach_keeps_the_cards_in_the_manifest(bundle, adapter):
    manifest = read_manifest(bundle)
    base = manifest.base.card
    assert (base.licence, base.base.name, base.base.source) == (
        "Apache-2.0", "tiny-gunpoint", "hub:acme/tiny")  # the flag over the base's own card
    assert base.base.fingerprint == manifest.base.weights_fingerprint
    entry = manifest.adapter("line7")
    trained = Card.model_validate(read_adapter_dir(adapter).meta["card"])
    assert entry.card == trained.model_copy(update={"base": trained.base.model_copy(
        update={"source": "hub:acme/tiny"})})
    code, out, _ = cli("inspect", bundle)
    assert code == 0 and "cards:" in out
    assert "line7 v1: \"licence LicenseRef-acme-internal, by ana, created" in out
    assert "base: \"licence Apache-2.0" in out


def test_add_adapter_cards_and_flags(bundle, adapter, work, tmp_path):
    report = add_adapter(bundle=bundle, adapter=adapter, name="line7",
                         card=CardOptions(licence="MIT", author="bo"))
    assert report.path == bundle / "adapters" / "line7.v2.onnx_adapter"
    v1, v2 = (read_manifest(bundle).adapter("line7", v) for v in (1, 2))
    # the text of the LicenseRef it was trained under does not follow the new licence
    assert (v2.card.licence, v2.card.licence_text, v2.card.author) == ("MIT", None, "bo")
    assert v2.card.data == v1.card.data and v1.card.author == "ana"
    assert v2.card.base.licence == "Apache-2.0"  # from the bundle's base card
    code, out, err = cli("add-adapter", "--bundle", bundle, "--adapter", adapter, "--name",
                         "line7", "--licence", "Apache-2.0 WITH Foo-exception")
    assert code == ConfigError.exit_code and err.count("\n") == 1
    assert err.startswith("error: --licence (licence): Foo-exception is not an SPDX licence id")


def test_sign_carries_the_card_and_a_tampered_card_breaks_the_signature(bundle, tmp_path):
    private, public = keygen(out=tmp_path / "k")
    file = tmp_path / "line7.edgeadp"
    assert cli("sign", "--bundle", bundle, "--name", "line7", "--version", "1", "--key",
               private, "--out", file)[0] == 0
    header, body = unpack(file.read_bytes(), 1 << 22)
    assert Card.model_validate(header["card"]) == read_manifest(bundle).adapter("line7", 1).card
    trusted = load_public_keys([public])
    assert verify(header, trusted, require_signed=True)
    code, out, _ = cli("inspect", file)
    assert code == 0 and "kind" not in out.splitlines()[0].split(":")[0]
    assert "adapter envelope" in out and "author: \"ana\"" in out and "signed: by key" in out
    forged = {**header, "card": {**header["card"], "licence": "MIT"}}
    again, _ = unpack(pack(forged, body), 1 << 22)
    with pytest.raises(AdapterRejected, match="signature is invalid"):
        verify(again, trusted, require_signed=True)
    assert envelope_bytes(bundle=bundle, name="line7", version=1) != file.read_bytes()


@pytest.mark.parametrize("args, words", [
    (["--licence", "Foo-1.0"], "error: --licence (licence): Foo-1.0 is not an SPDX licence id"),
    (["--licence", "LicenseRef-acme"], "error: --licence-file (licence_text): licence "
     "LicenseRef-acme is a LicenseRef: its text must travel with it"),
    (["--base-licence", "Apache2"], "error: --base-licence (base.licence): Apache2 is not"),
    (["--licence-file", "missing.txt"], "error: --licence-file missing.txt: cannot read"),
    (["--card", "CARD"], "error: --card CARD: author_name: not a card file key"),
])
def test_card_option_errors_are_one_line_before_training(work, tmp_path, args, words):
    card = tmp_path / "bad.toml"
    card.write_text('author_name = "x"\n')
    args = [str(card) if a == "CARD" else a for a in args]
    code, _, err = cli("train", "--weights", work["weights"], "--data", work["train"],
                       *FAST, "--out", tmp_path / "never", *args)
    assert code == ConfigError.exit_code and err.count("\n") == 1, err
    assert err.startswith(words.replace("CARD", str(card))), err
    assert not (tmp_path / "never").exists()


def test_merged_model_carries_the_card(work, adapter, tmp_path):
    import onnx

    out = tmp_path / "merged.onnx"
    assert cli("merge", "--weights", work["weights"], "--adapter", adapter, "--out", out)[0] == 0
    props = {p.key: p.value for p in onnx.load(str(out)).metadata_props}
    card = Card.model_validate_json(props["edge.card"])
    assert (card.author, card.licence, card.base.licence) == (
        "ana", "LicenseRef-acme-internal", "Apache-2.0")


def test_attach_writes_a_card_for_an_adapter_without_one(work, adapter, tmp_path):
    """A directory `peft` wrote (no edge_adapter.json card): attach's card holds the flags,
    the author (the OS user by default) and the base's card."""
    bare = tmp_path / "bare"
    bare.mkdir()
    for name in ("adapter_config.json", "adapter_model.safetensors"):
        (bare / name).write_bytes((adapter / name).read_bytes())
    out = tmp_path / "bundle"
    code, _, err = cli("attach", "--weights", work["weights"], "--adapter", bare, "--out", out,
                       "--licence", "MIT")
    assert code == 0, err
    card = read_manifest(out).adapter("bare").card
    assert (card.licence, card.author, card.base.licence) == ("MIT", os_user(), "Apache-2.0")
    assert card.data.fingerprint is None and card.created is None
