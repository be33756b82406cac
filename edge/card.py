"""Cards: the provenance and licence of a base or an adapter, kept beside its weights (the
PEFT directory's edge_adapter.json, a base's edge_model.json), in the bundle's manifest and
inside the signed envelope, so a gateway can tell for any result who trained the adapter, on
what data, from which base, under which licence (docs/CARDS.md).

    card = Card.model_validate(doc)        # licences checked as SPDX expressions
    card.essentials()                      # what the gateway's retained state carries
    card.value("data.fingerprint")         # a dotted field, as [adapters.policy] names them

A licence is an SPDX licence expression ("Apache-2.0", "MIT OR Apache-2.0") whose ids are
on the SPDX licence list (the `license-expression` package), or a `LicenseRef-<id>` of one's
own, whose text then travels in `licence_text`.
"""

from __future__ import annotations

import datetime as dt
import re
from functools import lru_cache
from typing import Annotated, Any, Literal

from license_expression import ExpressionError, get_spdx_licensing
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, model_validator

CARD_FORMAT = "edge-card/1"
LICENCE_REF = re.compile(r"LicenseRef-[A-Za-z0-9.\-]+")
MAX_TEXT = 32 * 1024  # a licence text; the envelope header holds at most 512 KiB in all
MAX_NOTE = 4000  # intended use, limits, a data description
SHA256 = r"^[0-9a-f]{64}$"


@lru_cache(maxsize=1)
def _licensing():
    return get_spdx_licensing()  # the SPDX list shipped in the package: no network


def licence_problem(expression: str) -> str | None:
    """Why `expression` is not a licence a card may name (None when it is one)."""
    try:
        parsed = _licensing().parse(expression, validate=False)
    except ExpressionError as exc:
        return f"{expression[:80]!r} is not an SPDX licence expression ({exc})"
    if parsed is None:
        return "the licence is empty"
    unknown = [key for key in _licensing().unknown_license_keys(parsed)
               if not LICENCE_REF.fullmatch(key)]
    if unknown:
        return (f"{', '.join(unknown)[:80]} is not an SPDX licence id (https://spdx.org/"
                "licenses/); a licence of your own is LicenseRef-<name> with its text")
    return None


def normal_licence(expression: str) -> str:
    """The expression with ids in their SPDX spelling ("mit" -> "MIT", "GPL-2.0+" ->
    "GPL-2.0-or-later")."""
    parsed = _licensing().parse(expression, validate=False)
    return str(parsed) if parsed is not None else expression


def _licence(value: str) -> str:
    problem = licence_problem(value)
    if problem:
        raise ValueError(problem)
    return normal_licence(value)


Licence = Annotated[str, AfterValidator(_licence)]
Note = Annotated[str, Field(max_length=MAX_NOTE)]


def _created(value: str) -> str:
    try:
        dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise ValueError("not an ISO 8601 time like 2025-01-31T12:00:00Z") from None
    return value


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


def _needs_text(licence: str | None, text: str | None, where: str) -> None:
    if licence and "LicenseRef-" in licence and not text:
        raise ValueError(f"{where}licence {licence} is a LicenseRef: its text must travel with "
                         f"it ({where}licence_text, from --licence-file or the card file)")


class BaseRef(_Strict):
    """The base model: what it is called, where it came from, its licence and weights."""

    name: str | None = Field(None, max_length=200, description="the base's name")
    source: str | None = Field(None, max_length=1000, description="where the base came from "
                               "(a URL, a model hub id, a path)")
    licence: Licence | None = Field(None, description="the base's licence (SPDX)")
    licence_text: str | None = Field(None, max_length=MAX_TEXT,
                                     description="the text of a LicenseRef- licence")
    fingerprint: str | None = Field(None, pattern=SHA256, description="the base weights' "
                                    "fingerprint (edge.bundle BaseInfo.weights_fingerprint)")

    @model_validator(mode="after")
    def _text(self) -> BaseRef:
        _needs_text(self.licence, self.licence_text, "base.")
        return self


class DataRef(_Strict):
    """The training data, described and fingerprinted; the data itself never travels."""

    description: Note | None = Field(None, description="what the data is (free text)")
    fingerprint: str | None = Field(None, pattern=SHA256, description="sha256 of the training "
                                    "windows (float32), labels (int64) and class names")
    n_train: int | None = Field(None, ge=0, description="training windows")
    n_test: int | None = Field(None, ge=0, description="windows the metrics were measured on")
    eval_split: str | None = Field(None, max_length=40, description="test, val or holdout")


class Card(_Strict):
    """A base's or an adapter's card. For a base (the manifest's base.card) `base` describes
    the base itself and `licence` is its licence."""

    format: Literal["edge-card/1"] = CARD_FORMAT
    licence: Licence | None = Field(None, description="the licence this model is shared under")
    licence_text: str | None = Field(None, max_length=MAX_TEXT,
                                     description="the text of a LicenseRef- licence")
    author: str | None = Field(None, max_length=200, description="who trained it")
    created: Annotated[str, AfterValidator(_created)] | None = Field(
        None, description="when it was trained (ISO 8601, UTC)")
    tool_version: str | None = Field(None, max_length=80, description="edge-adapters version")
    command: str | None = Field(None, max_length=MAX_NOTE, description="the command line")
    base: BaseRef = Field(default_factory=BaseRef)
    data: DataRef = Field(default_factory=DataRef)
    metrics: dict[str, float] = Field(default_factory=dict,
                                      description="accuracy and the like, on data.n_test")
    intended_use: Note | None = None
    limits: Note | None = None

    @model_validator(mode="after")
    def _text(self) -> Card:
        _needs_text(self.licence, self.licence_text, "")
        return self

    def value(self, path: str) -> Any:
        """A field by its dotted name ("author", "base.licence", "data.fingerprint")."""
        value: Any = self
        for part in path.split("."):
            value = getattr(value, part)
        return value

    def essentials(self) -> dict[str, str | None]:
        """What the gateway's retained adapter state says of every held version."""
        return {"licence": self.licence, "author": self.author,
                "data_fingerprint": self.data.fingerprint, "created": self.created}

    def summary(self) -> str:
        """One line for `edge-export inspect`."""
        parts = [f"licence {self.licence or '(none)'}", f"by {self.author or '(unknown)'}"]
        if self.created:
            parts.append(f"created {self.created}")
        if self.base.name or self.base.licence:
            licence = self.base.licence or "no licence"
            parts.append(f"base {self.base.name or '(unnamed)'} ({licence})")
        if self.data.fingerprint:
            parts.append(f"data {self.data.fingerprint[:12]}… ({self.data.n_train} train / "
                         f"{self.data.n_test} {self.data.eval_split or 'test'})")
        return ", ".join(parts)


def _field_names(model: type[BaseModel], prefix: str = "") -> list[str]:
    names = []
    for name, info in model.model_fields.items():
        inner = info.annotation if isinstance(info.annotation, type) else None
        if inner is not None and issubclass(inner, BaseModel):
            names += _field_names(inner, f"{prefix}{name}.")
        elif name != "format":
            names.append(prefix + name)
    return names


FIELDS: tuple[str, ...] = tuple(_field_names(Card))  # what [adapters.policy] may require
