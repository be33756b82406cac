"""Writing cards (edge/card.py) on the workstation: what `train`, `pilot`, `attach` and
`add-adapter` record of a base or an adapter, from the options, a card file and what was
measured. The data is fingerprinted (sha256 of windows, labels and class names), never copied.

    opts = CardOptions(author="ana", licence="Apache-2.0", card="card.toml")
    card = make_card(options=opts, layers=[{"base": base_ref}, measured])

Layers merge in order (later wins), the options last: the card file, then the flags.
"""

from __future__ import annotations

import datetime as dt
import getpass
import hashlib
import json
import shlex
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import ValidationError

from edge import __version__
from edge.card import Card
from edge.errors import ConfigError
from export.models import meta_beside

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

# What a card file may set (the rest is measured); `licence_file` reads a LicenseRef's text.
FILE_KEYS = {"author", "licence", "licence_file", "intended_use", "limits"}
FILE_TABLES = {"base": {"name", "source", "licence", "licence_file"}, "data": {"description"}}
# The flag that sets each field, for errors that name what to change.
FLAGS = {"licence": "--licence", "licence_text": "--licence-file", "author": "--author",
         "intended_use": "--intended-use", "limits": "--limits", "base.name": "--base-name",
         "base.source": "--base-source", "base.licence": "--base-licence",
         "data.description": "--data-description"}
CARD_METRICS = ("accuracy", "test_accuracy", "val_accuracy", "holdout_accuracy",
                "train_accuracy")
DATA_CONTEXT = b"edge-data-fingerprint-v1\n"


@dataclass
class CardOptions:
    """The card flags of train / pilot / attach / add-adapter (None: not given)."""

    author: str | None = None
    licence: str | None = None
    licence_file: str | Path | None = None
    base_name: str | None = None
    base_source: str | None = None
    base_licence: str | None = None
    intended_use: str | None = None
    limits: str | None = None
    data_description: str | None = None
    card: str | Path | None = None  # a TOML card file; the flags win over it
    command: str | None = None  # the command line [default: this process's]

    def overrides(self) -> dict:
        """The fields these options set: the card file's, then the flags' on top."""
        found = _read_card_file(Path(self.card)) if self.card is not None else {}
        flags = {"author": self.author, "licence": self.licence,
                 "licence_text": _licence_text(self.licence_file, "--licence-file"),
                 "intended_use": self.intended_use, "limits": self.limits,
                 "base": {"name": self.base_name, "source": self.base_source,
                          "licence": self.base_licence},
                 "data": {"description": self.data_description}}
        return merged(found, _drop_none(flags))

    def base_overrides(self) -> dict:
        """Only what names the base (a bundle's base card takes these, not the adapter's)."""
        return {"base": self.overrides().get("base", {})}


def _licence_text(path: str | Path | None, flag: str) -> str | None:
    if path is None:
        return None
    try:
        return Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{flag} {path}: cannot read the licence text ({exc})") from None


def _read_card_file(path: Path) -> dict:
    """A card file: FILE_KEYS at the top, [base] and [data] tables; unknown keys are errors."""
    try:
        doc = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"--card {path}: cannot read a TOML card file ({exc})") from None
    out: dict[str, Any] = {}
    for key, value in doc.items():
        allowed = FILE_TABLES.get(key)
        if allowed is not None and isinstance(value, dict):
            out[key] = _card_table(path, key, value, allowed)
        elif key in FILE_KEYS and not isinstance(value, dict):
            out.update(_card_table(path, "", {key: value}, FILE_KEYS))
        else:
            raise ConfigError(f"--card {path}: {key}: not a card file key (allowed: "
                              f"{', '.join(sorted(FILE_KEYS | set(FILE_TABLES)))})")
    return out


def _card_table(path: Path, table: str, values: dict, allowed: set[str]) -> dict:
    out = {}
    for key, value in values.items():
        where = f"{table}.{key}" if table else key
        if key not in allowed:
            raise ConfigError(f"--card {path}: {where}: not a card file key (allowed: "
                              f"{', '.join(sorted(allowed))})")
        if not isinstance(value, str):
            raise ConfigError(f"--card {path}: {where}: should be a string")
        if key == "licence_file":  # relative to the card file
            text_path = Path(value) if Path(value).is_absolute() else path.parent / value
            out["licence_text"] = _licence_text(text_path, f"--card {path}: {where}")
        else:
            out[key] = value
    return out


def _drop_none(doc: dict) -> dict:
    out = {}
    for key, value in doc.items():
        if isinstance(value, dict):
            value = _drop_none(value)
        if value is not None and value != {}:
            out[key] = value
    return out


def merged(*layers: dict) -> dict:
    """Nested dicts merged in order: a later layer's values win, tables merge key by key."""
    out: dict = {}
    for layer in layers:
        for key, value in (layer or {}).items():
            if isinstance(value, dict) and isinstance(out.get(key), dict):
                out[key] = merged(out[key], value)
            else:
                out[key] = value
    return out


def make_card(*, options: CardOptions | None, layers: list[dict | None],
              base_only: bool = False) -> Card:
    """The card from `layers` (earliest first), then the options (the card file, then the
    flags; only the base's with `base_only`); the author defaults to the OS user. A bad value
    is a ConfigError naming the flag."""
    options = options or CardOptions()
    top = options.base_overrides() if base_only else options.overrides()
    doc = merged(*layers, _texts_of(top))
    if not base_only:
        doc.setdefault("author", os_user())
    try:
        return Card.model_validate(doc)
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(str(p) for p in err["loc"])
        if "is a LicenseRef" in err["msg"]:  # a whole-model check: the text is missing
            where = f"{where}.licence_text".lstrip(".")
        flag = FLAGS.get(where, "--card")
        raise ConfigError(f"{flag} ({where}): {err['msg'].removeprefix('Value error, ')}"
                          ) from None


def _texts_of(top: dict) -> dict:
    """`top`, with a licence it sets and no text for: the text an earlier layer kept for
    another licence does not follow (None drops it in `merged`)."""
    top = dict(top)
    if "licence" in top and "licence_text" not in top:
        top["licence_text"] = None
    base = top.get("base", {})
    if "licence" in base and "licence_text" not in base:
        top["base"] = {**base, "licence_text": None}
    return top


def card_dict(card: Any) -> dict:
    """A card (a Card, its dict, or None) as a plain dict without unset fields."""
    if card is None:
        return {}
    if isinstance(card, Card):
        return card.model_dump(mode="json", exclude_none=True)
    return dict(card) if isinstance(card, dict) else {}


def os_user() -> str | None:
    try:
        return getpass.getuser()
    except (OSError, KeyError):  # no login name and no $USER (a bare container)
        return None


def data_fingerprint(x: np.ndarray, y: np.ndarray, class_names: list[str]) -> str:
    """sha256 of the training windows x (N, C, L) as float32, the labels y (N,) as int64,
    their shapes and the class names: the same data gives the same print, the data stays."""
    digest = hashlib.sha256(DATA_CONTEXT)
    digest.update(json.dumps({"x": list(x.shape), "y": list(y.shape),
                              "classes": list(class_names)}).encode())
    digest.update(np.ascontiguousarray(x, dtype=np.float32).tobytes())
    digest.update(np.ascontiguousarray(y, dtype=np.int64).tobytes())
    return digest.hexdigest()


def measured(*, options: CardOptions | None, x: np.ndarray, y: np.ndarray,
             class_names: list[str], source: str, n_test: int, eval_split: str,
             metrics: dict, fingerprint: str) -> dict:
    """The card layer a training run measures: when, with what tool and command, the data's
    fingerprint and sizes, the scores, and the base's weights fingerprint."""
    command = options.command if options is not None and options.command else None
    return {
        "created": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "tool_version": __version__,
        "command": command or shlex.join([Path(sys.argv[0]).name, *sys.argv[1:]]),
        "base": {"fingerprint": fingerprint},
        "data": {"description": source, "fingerprint": data_fingerprint(x, y, class_names),
                 "n_train": int(len(y)), "n_test": int(n_test), "eval_split": eval_split},
        "metrics": {k: float(metrics[k]) for k in CARD_METRICS
                    if isinstance(metrics.get(k), (int, float))},
    }


def base_card_beside(weights: str | Path | None) -> dict:
    """The card of a base trained here (`train --method full` writes it in edge_model.json
    beside model.safetensors; export/models meta_beside); {} when there is none."""
    return card_dict(meta_beside(weights).get("card"))


def base_ref(base_card: dict) -> dict:
    """What an adapter's card says of its base, from the base's own card."""
    return {"base": base_card.get("base", {})} if base_card else {}


def training_card(options: CardOptions | None, *, train_ds: Any, n_test: int, eval_split: str,
                  metrics: dict, weights: str | Path | None, fingerprint: str,
                  new_base: str | None = None) -> dict:
    """The card of a training run's output: the base's card (beside `weights`) for what it
    says of the base, what was measured, then the options. `train_ds` is the SensorDataset
    trained on (raw windows X, labels y). `new_base`: the weights fingerprint of a base
    trained in full, whose card then describes that base itself."""
    layers = [base_ref(base_card_beside(weights)),
              measured(options=options, x=train_ds.X, y=train_ds.y,
                       class_names=list(train_ds.class_names), source=train_ds.source,
                       n_test=n_test, eval_split=eval_split, metrics=metrics,
                       fingerprint=fingerprint)]
    if new_base is not None:  # a new base: its own fingerprint; its licence on both sides
        layers.append({"base": {"fingerprint": new_base}})
    card = card_dict(make_card(options=options, layers=layers))
    if new_base is not None:
        own = card.get("licence") or card["base"].get("licence")
        card["licence"] = card["base"]["licence"] = own
        card = card_dict(Card.model_validate(_drop_none(card)))
    return card


def bundle_base_card(options: CardOptions | None, weights: str | Path | None,
                     fingerprint: str) -> Card:
    """A bundle's base card: the card beside its weights (a base trained here), the base
    flags (--base-name, --base-source, --base-licence) on top; its licence is the base's."""
    layers = [base_card_beside(weights), {"base": {"fingerprint": fingerprint}}]
    card = card_dict(make_card(options=options, layers=layers, base_only=True))
    licence = card.get("licence") or card["base"].get("licence")
    if licence is not None:
        card["licence"] = card["base"]["licence"] = licence
        text = card.get("licence_text") or card["base"].get("licence_text")
        if text is not None:
            card["licence_text"] = card["base"]["licence_text"] = text
    return Card.model_validate(card)


def adapter_card(options: CardOptions | None, adapter_meta: dict, base_card: Card | None,
                 fingerprint: str) -> Card:
    """An adapter's card in a bundle: what the bundle's base card says of the base, the
    adapter directory's own card (written by train / pilot), the options on top."""
    base = base_ref(card_dict(base_card))
    return make_card(options=options, layers=[base, card_dict(adapter_meta.get("card")),
                                              {"base": {"fingerprint": fingerprint}}])
