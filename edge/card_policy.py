"""`[adapters.policy]`: which licences a gateway serves and which card fields an adapter
must fill. An adapter that breaks it is refused at intake with the reason; a base whose
licence is not allowed keeps the gateway from starting (docs/CARDS.md).

    [adapters.policy]
    allowed_licences = ["Apache-2.0", "MIT", "LicenseRef-acme-internal"]
    required_fields = ["author", "licence", "data.fingerprint"]
"""

from __future__ import annotations

from typing import Annotated, Any

from license_expression import AND, OR, LicenseWithExceptionSymbol
from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from .card import FIELDS, Card, Licence, _licensing


def _known_field(value: str) -> str:
    if value not in FIELDS:
        raise ValueError(f"not a card field; the fields are {', '.join(FIELDS)}")
    return value


CardField = Annotated[str, AfterValidator(_known_field)]


def licence_allowed(expression: str, allowed: set[str]) -> bool:
    """Whether a licence expression is within `allowed` (SPDX ids in their normal
    spelling): one side of an OR suffices, every side of an AND is needed, and
    "X WITH exception" passes when that whole phrase or X alone is allowed."""
    def ok(node: Any) -> bool:
        if isinstance(node, OR):
            return any(ok(arg) for arg in node.args)
        if isinstance(node, AND):
            return all(ok(arg) for arg in node.args)
        if isinstance(node, LicenseWithExceptionSymbol):
            return str(node) in allowed or node.license_symbol.key in allowed
        return node.key in allowed

    return ok(_licensing().parse(expression, validate=False))


class CardPolicy(BaseModel):
    """[adapters.policy]: what an adapter's card must say before the gateway holds it."""

    model_config = ConfigDict(extra="forbid")

    allowed_licences: list[Licence] = Field(
        default_factory=list, description="SPDX ids (or LicenseRef-...) the gateway serves: an "
        "adapter's licence, its base's and the bundle base's must be among them; empty = any")
    required_fields: list[CardField] = Field(
        default_factory=list, description="card fields an adapter must fill, dotted: author, "
        "licence, data.fingerprint, base.licence, intended_use ... (docs/CARDS.md)")

    @property
    def active(self) -> bool:
        return bool(self.allowed_licences or self.required_fields)

    def adapter_problem(self, card: Card | None) -> str | None:
        """Why an adapter with this card breaks the policy (None: it does not)."""
        if not self.active:
            return None
        if card is None:
            return ("the adapter carries no card, and adapters.policy requires one: export it "
                    "again with edge-export train / attach / add-adapter, then sign it again")
        missing = [f for f in self.required_fields if card.value(f) in (None, "", {}, [])]
        if missing:
            return (f"its card has no {', '.join(missing)}, which adapters.policy."
                    "required_fields asks for")
        return (self._licence_problem(card.licence, "its licence")
                or self._licence_problem(card.base.licence, "its base's licence", missing_ok=True))

    def base_problem(self, card: Card | None) -> str | None:
        """Why a bundle's base (its manifest's base.card) may not run here."""
        if not self.allowed_licences:
            return None
        licence = None if card is None else (card.licence or card.base.licence)
        return self._licence_problem(licence, "the base's licence")

    def _licence_problem(self, licence: str | None, what: str, missing_ok: bool = False
                         ) -> str | None:
        allowed = self.allowed_licences
        if not allowed or (licence is None and missing_ok):
            return None
        if licence is None:
            return (f"{what} is not recorded, and adapters.policy.allowed_licences allows only "
                    f"{', '.join(allowed)}")
        if not licence_allowed(licence, set(allowed)):
            return (f"{what} {licence} is not in adapters.policy.allowed_licences "
                    f"({', '.join(allowed)})")
        return None
