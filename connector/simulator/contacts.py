"""The simulated contact store of one brand: upsert by exact identifier, PATCH, tags, listing."""

from __future__ import annotations

import base64
import builtins
import json
import random
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from connector.simulator.problems import FieldError, ProblemError, validation_error
from connector.simulator.validation import STRING_FIELDS, parse_time

# Omnisend derives the code from the country name; a handful of names is enough to rehearse.
COUNTRY_CODES = {
    "united states": "US",
    "united kingdom": "GB",
    "germany": "DE",
    "france": "FR",
    "lithuania": "LT",
    "canada": "CA",
    "spain": "ES",
    "italy": "IT",
    "poland": "PL",
    "netherlands": "NL",
}
_PLAIN_FIELDS = tuple(f for f in STRING_FIELDS if f not in ("createdAt", "countryCode", "country"))


def iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


_ids = random.Random()


def new_object_id() -> str:
    """A 24-hex identifier, like Omnisend's (MongoDB-style) ids. Not a secret: a plain PRNG is
    enough and far cheaper than the OS's entropy for the ~100 ids a batch needs."""
    return f"{_ids.getrandbits(96):024x}"


@dataclass
class Channel:
    status: str
    changed_at: float


@dataclass
class Identifier:
    type: str
    id: str
    channels: dict[str, Channel] = field(default_factory=dict)


@dataclass
class Contact:
    id: str
    seq: int
    created_at: float
    updated_at: float
    identifiers: list[Identifier] = field(default_factory=list)
    fields: dict[str, str] = field(default_factory=dict)
    tags: list[str] = field(default_factory=list)
    custom_properties: dict[str, Any] = field(default_factory=dict)
    consents: list[dict[str, Any]] = field(default_factory=list)
    welcome_messages: int = 0  # identifiers posted with sendWelcomeMessage in effect

    @property
    def email(self) -> str | None:
        return next((i.id for i in self.identifiers if i.type == "email"), None)

    def render(self) -> dict[str, Any]:
        """The ContactResponse representation."""
        body: dict[str, Any] = {
            "id": self.id,
            "identifiers": [_render_identifier(i) for i in self.identifiers],
            "tags": list(self.tags),
            "segments": [],
            "customProperties": dict(self.custom_properties),
            "createdAt": iso(self.created_at),
            "updatedAt": iso(self.updated_at),
            "consents": list(self.consents),
            "optIns": [],
            "statuses": _statuses(self.identifiers),
            "status": _email_status(self.identifiers),
            **self.fields,
        }
        if self.email is not None:
            body["email"] = self.email
        phones = [i.id for i in self.identifiers if i.type == "phone"]
        if phones:
            body["phone"] = phones
        return body


def _render_identifier(ident: Identifier) -> dict[str, Any]:
    return {
        "type": ident.type,
        "id": ident.id,
        "channels": {
            name: {"status": ch.status, "statusChangedAt": iso(ch.changed_at)}
            for name, ch in ident.channels.items()
        },
    }


def _statuses(idents: list[Identifier]) -> list[dict[str, str]]:
    out = [
        {"channel": name, "status": ch.status, "statusChangedAt": iso(ch.changed_at)}
        for ident in idents
        for name, ch in ident.channels.items()
    ]
    return sorted(out, key=lambda s: s["statusChangedAt"], reverse=True)


def _email_status(idents: list[Identifier]) -> str:
    for ident in idents:
        if ident.type == "email" and "email" in ident.channels:
            return ident.channels["email"].status
    return "nonSubscribed"


class ContactStore:
    """Contacts of one brand, keyed by exact (case-sensitive) identifier values."""

    def __init__(self) -> None:
        self.by_id: dict[str, Contact] = {}
        self._by_ident: dict[tuple[str, str], Contact] = {}
        self._seq = 0
        # Listings, filtered and sorted, while no contact changes: paging through one costs
        # O(page) per page, not O(contacts) (a reconcile pages through a million).
        self._version = 0
        self._listings: dict[tuple[tuple[str, str], ...], list[Contact]] = {}
        self._listed_version = 0

    def find(self, kind: str, value: str) -> Contact | None:
        return self._by_ident.get((kind, value))

    def retag(self, contact: Contact, tags: list[str], add: bool) -> None:
        """Tags added to or removed from a contact (POST and DELETE /contacts/tags)."""
        self._version += 1
        if add:
            contact.tags = list(dict.fromkeys([*contact.tags, *tags]))
        else:
            removed = set(tags)
            contact.tags = [t for t in contact.tags if t not in removed]

    def upsert(self, body: dict[str, Any], now: float) -> tuple[Contact, bool]:
        """POST /contacts semantics on a validated body: (contact, created)."""
        idents: list[dict[str, Any]] = body["identifiers"]
        contact = self._match(idents)
        created = contact is None
        if contact is None:
            contact = self._new(now)
        self._apply(contact, body, now)
        if not contact.identifiers:
            # Every identifier belongs to another contact, so Omnisend ignores them all and the
            # contact cannot be created.
            self._forget(contact)
            raise validation_error(
                [FieldError("identifiers", "conflict", "Identifiers belong to other contacts")]
            )
        return contact, created

    def patch(self, contact: Contact, body: dict[str, Any], now: float) -> None:
        """PATCH semantics: only the supplied fields change; a taken identifier is a 409."""
        for ident in body.get("identifiers") or []:
            owner = self.find(ident["type"], ident["id"])
            if owner is not None and owner is not contact:
                raise ProblemError(409, f"Contact identifier {ident['type']} already exists")
        self._apply(contact, body, now)

    def _match(self, idents: list[dict[str, Any]]) -> Contact | None:
        for kind in ("email", "phone"):
            for ident in idents:
                if ident["type"] == kind and (found := self.find(kind, ident["id"])):
                    return found
        return None

    def _new(self, now: float) -> Contact:
        self._seq += 1
        contact = Contact(id=new_object_id(), seq=self._seq, created_at=now, updated_at=now)
        self.by_id[contact.id] = contact
        return contact

    def _forget(self, contact: Contact) -> None:
        self._version += 1
        self.by_id.pop(contact.id, None)

    def _apply(self, contact: Contact, body: dict[str, Any], now: float) -> None:
        self._version += 1
        for ident_body in body.get("identifiers") or []:
            self._apply_identifier(contact, ident_body, now)
        for name in _PLAIN_FIELDS:
            if name in body:
                contact.fields[name] = body[name]
        _apply_country(contact, body)
        if "tags" in body:  # tags in a write replace the contact's tags
            contact.tags = list(dict.fromkeys(body["tags"]))
        if "customProperties" in body:  # replaced too (documentation silent; conservative)
            contact.custom_properties = dict(body["customProperties"])
        if "createdAt" in body:
            contact.custom_properties["externalCreated"] = body["createdAt"]
        contact.updated_at = now

    def _apply_identifier(self, contact: Contact, body: dict[str, Any], now: float) -> None:
        key = (body["type"], body["id"])
        owner = self._by_ident.get(key)
        if owner is not None and owner is not contact:
            return  # an identifier of another contact is silently ignored, as Omnisend does
        ident = next((i for i in contact.identifiers if (i.type, i.id) == key), None)
        if ident is None:
            ident = Identifier(type=body["type"], id=body["id"])
            contact.identifiers.append(ident)
            self._by_ident[key] = contact
        for name, channel in (body.get("channels") or {}).items():
            _apply_channel(ident, name, channel, now)
        if body.get("sendWelcomeMessage", True):
            contact.welcome_messages += 1
        if isinstance(body.get("consent"), dict):
            consent = {"channel": "email" if ident.type == "email" else "sms", **body["consent"]}
            consent.setdefault("createdAt", iso(now))
            contact.consents.append(consent)

    def list(self, query: dict[str, str]) -> dict[str, Any]:
        """GET /contacts: filters, sort and cursor paging."""
        limit = _limit(query.get("limit"))
        contacts = self._listing(query)
        start = 0
        if after := query.get("after"):
            start = _decode_cursor(after)
        elif before := query.get("before"):
            start = max(0, _decode_cursor(before) - limit)
        page = contacts[start : start + limit]
        has_more = start + limit < len(contacts)
        return {
            "contacts": [c.render() for c in page],
            "paging": {
                "cursors": {
                    "after": _encode_cursor(start + limit) if has_more else None,
                    "before": _encode_cursor(start) if start > 0 else None,
                },
                "hasMore": has_more,
                "limit": limit,
            },
        }

    def _listing(self, query: dict[str, str]) -> builtins.list[Contact]:
        """The contacts a query selects, in its order; kept until any contact changes."""
        if self._listed_version != self._version:
            self._listings.clear()
            self._listed_version = self._version
        key = tuple(sorted((k, v) for k, v in query.items() if k in _LISTING_KEYS))
        contacts = self._listings.get(key)
        if contacts is None:
            contacts = [c for c in self.by_id.values() if _matches(c, query)]
            order = "updated_at" if query.get("sort") == "updatedAt" else "created_at"
            reverse = query.get("direction", "desc") != "asc"
            contacts.sort(key=lambda c: (getattr(c, order), c.seq), reverse=reverse)
            if len(self._listings) >= _MAX_LISTINGS:
                self._listings.clear()
            self._listings[key] = contacts
        return contacts


# What decides a listing's contacts and their order (not its page: limit and cursors).
_LISTING_KEYS = frozenset(
    {"email", "phone", "tag", "status", "segmentID", "updatedAtFrom", "sort", "direction"}
)
_MAX_LISTINGS = 16


def _apply_channel(ident: Identifier, name: str, body: dict[str, Any], now: float) -> None:
    given = body.get("statusChangedAt")
    changed = parse_time(given) if given else None  # validated before: None means "not sent"
    if changed is None:
        changed = now
    stored = ident.channels.get(name)
    # A status older than the stored one is ignored: last writer by timestamp wins.
    if stored is None or changed >= stored.changed_at:
        ident.channels[name] = Channel(status=body["status"], changed_at=changed)


def _apply_country(contact: Contact, body: dict[str, Any]) -> None:
    if "country" in body:
        contact.fields["country"] = body["country"]
    if "countryCode" in body:  # wins over the name
        contact.fields["countryCode"] = body["countryCode"].upper()
    elif "country" in body and (code := COUNTRY_CODES.get(body["country"].strip().lower())):
        contact.fields["countryCode"] = code


def _limit(raw: str | None) -> int:
    if raw is None:
        return 100
    if not raw.isdigit() or not 1 <= int(raw) <= 250:
        raise validation_error([FieldError("limit", "out_of_range", "Must be between 1 and 250")])
    return int(raw)


def _matches(contact: Contact, query: dict[str, str]) -> bool:
    if (email := query.get("email")) is not None and contact.email != email:
        return False
    phone = query.get("phone")
    if phone is not None and all(i.id != phone for i in contact.identifiers if i.type == "phone"):
        return False
    if (tag := query.get("tag")) is not None and tag not in contact.tags:
        return False
    if (status := query.get("status")) is not None and _email_status(contact.identifiers) != status:
        return False
    if query.get("segmentID") is not None:
        return False  # the simulator has no Omnisend-side segments
    since = query.get("updatedAtFrom")
    return since is None or contact.updated_at >= (parse_time(since) or 0.0)


def check_list_filters(query: dict[str, str]) -> None:
    """The documented filter restrictions of GET /contacts."""
    errors: list[FieldError] = []
    if "tag" in query and "status" in query:
        errors.append(
            FieldError("tag", "invalid_combination", "tag and status cannot be used together")
        )
    exclusive = ("email", "phone", "status", "segmentID", "tag")
    if "updatedAtFrom" in query:
        if any(f in query for f in exclusive):
            errors.append(
                FieldError(
                    "updatedAtFrom",
                    "invalid_combination",
                    "updatedAtFrom cannot be combined with " + ", ".join(exclusive),
                )
            )
        if parse_time(query["updatedAtFrom"]) is None:
            errors.append(
                FieldError("updatedAtFrom", "invalid_format", "Must be an RFC 3339 timestamp")
            )
    enums = {
        "sort": ("createdAt", "updatedAt"),
        "direction": ("asc", "desc"),
        "status": ("subscribed", "unsubscribed", "nonSubscribed"),
    }
    for name, allowed in enums.items():
        if name in query and query[name] not in allowed:
            errors.append(
                FieldError(name, "invalid_value", "Must be one of: " + ", ".join(allowed))
            )
    if errors:
        raise validation_error(errors)


def _encode_cursor(index: int) -> str:
    return base64.urlsafe_b64encode(json.dumps({"i": index}).encode()).decode().rstrip("=")


def _decode_cursor(cursor: str) -> int:
    try:
        padded = cursor + "=" * (-len(cursor) % 4)
        index = json.loads(base64.urlsafe_b64decode(padded))["i"]
    except (ValueError, KeyError, TypeError) as exc:
        raise validation_error([FieldError("after", "invalid_value", "Unknown cursor")]) from exc
    if not isinstance(index, int) or index < 0:
        raise validation_error([FieldError("after", "invalid_value", "Unknown cursor")])
    return index
