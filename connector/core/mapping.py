"""Profile attributes → Omnisend contact fields, email normalisation and validation.

Pure functions over data: the pipeline calls `Mapper.map` for every decoded event.
"""

from __future__ import annotations

import re
import string
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from typing import Any, Final

from connector.core.errors import ConfigError, InvalidRecord
from connector.core.events import SegmentChange

# Omnisend contact field ← profile attribute, the bulk export's optional fields.
DEFAULT_FIELD_MAP: dict[str, str] = {
    "firstName": "first_name",
    "lastName": "last_name",
    "address": "address",
    "country": "country",
    "state": "state",
    "city": "city",
    "postalCode": "postal_code",
}
CONTACT_FIELDS = frozenset({*DEFAULT_FIELD_MAP, "countryCode", "birthdate", "gender"})
DEFAULT_TAG_TEMPLATE = "segment: {segment_name}"
_TEMPLATE_FIELDS = frozenset({"segment_name", "segment_id"})
CHANNEL_STATUSES = frozenset({"subscribed", "nonSubscribed", "unsubscribed"})
# The one field of a mapped contact that is not a contact field: the email channel's status,
# which the upsert sends in the contact's identifier.
EMAIL_STATUS_FIELD = "_emailStatus"
# An upsert replaces these whole: two exports of one connection cannot share them.
WHOLE_FIELDS = ("customProperties", "the email channel status")

_ATOM = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+"
_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
EMAIL_RE = re.compile(rf"^{_ATOM}(?:\.{_ATOM})*@{_LABEL}(?:\.{_LABEL})*\.[A-Za-z]{{2,63}}$")
MAX_EMAIL_LENGTH = 254
# An event from further in the future than this is a producer bug, not clock skew.
MAX_FUTURE_SKEW_MS = 24 * 3600 * 1000
# Segments whose tag a mapper remembers.
MAX_KNOWN_TAGS = 10_000


def _birthdate(value: str) -> str | None:
    """`YYYY-MM-DD` of a real day, as Omnisend takes it."""
    if not _BIRTHDATE_RE.fullmatch(value):
        return None
    try:
        date.fromisoformat(value)
    except ValueError:
        return None
    return value


def _gender(value: str) -> str | None:
    lowered = value.lower()
    return lowered if lowered in ("m", "f") else None


def _country_code(value: str) -> str | None:
    """ISO 3166-1 alpha-2 (two ASCII letters), upper case."""
    return value.upper() if len(value) == 2 and value.isascii() and value.isalpha() else None


_BIRTHDATE_RE = re.compile(r"\d{4}-\d{2}-\d{2}")
# Fields whose format Omnisend checks: a value it would refuse is left out, since it refuses
# the whole contact for it (the contact would be neither synced nor tagged).
_FORMATTED: dict[str, Callable[[str], str | None]] = {
    "birthdate": _birthdate,
    "gender": _gender,
    "countryCode": _country_code,
}


def check_tag_template(template: str) -> str:
    """Refuse templates with placeholders other than {segment_name} and {segment_id}, or with
    a format spec or conversion (`{segment_name:d}` raises on the first event, `:.0` makes an
    empty tag, `:>5000` a huge one)."""
    try:
        parsed = list(string.Formatter().parse(template))
    except ValueError as exc:
        raise ConfigError(f"TAG_TEMPLATE {template!r} is not a valid template: {exc}") from exc
    names = {name for _, name, _, _ in parsed if name is not None}
    if any(spec or conversion for _, name, spec, conversion in parsed if name is not None):
        raise ConfigError(
            f"TAG_TEMPLATE {template!r}: placeholders take no format spec or conversion "
            "(write {segment_name} or {segment_id} as they are)"
        )
    unknown = names - _TEMPLATE_FIELDS
    if unknown or not template.strip():
        raise ConfigError(
            f"TAG_TEMPLATE {template!r} may only use {{segment_name}} and {{segment_id}}, "
            f"not {sorted(unknown)}"
        )
    return template


@dataclass(frozen=True)
class Mapping:
    """How a profile becomes an Omnisend contact."""

    email_attribute: str = "email"
    fields: dict[str, str] = field(default_factory=lambda: dict(DEFAULT_FIELD_MAP))
    preserve_email_case: bool = False
    tag_template: str = DEFAULT_TAG_TEMPLATE
    # Off by default: the connector never touches subscriptions unless told which attribute
    # holds an authoritative email status.
    email_status_attribute: str | None = None
    # customProperties name ← profile attribute ("add attribute" of the bulk export).
    custom_properties: dict[str, str] = field(default_factory=dict)

    def owned(self) -> set[str]:
        """The contact fields this mapping writes: no other export of its connection may."""
        owned = set(self.fields)
        if "country" in owned:
            owned.add("countryCode")  # a two-letter country is sent as the code
        if self.custom_properties:
            owned.add("customProperties")
        if self.email_status_attribute:
            owned.add("the email channel status")
        return owned

    def __post_init__(self) -> None:
        check_tag_template(self.tag_template)
        unknown = set(self.fields) - CONTACT_FIELDS
        if unknown:
            raise ConfigError(
                f"FIELD_MAP names unknown Omnisend fields {sorted(unknown)}; "
                f"known: {sorted(CONTACT_FIELDS)}"
            )


def normalise_email(raw: str, preserve_case: bool) -> str:
    email = raw.strip()
    return email if preserve_case else email.lower()


def is_valid_email(email: str) -> bool:
    return len(email) <= MAX_EMAIL_LENGTH and EMAIL_RE.match(email) is not None


@dataclass(slots=True, init=False)
class Mapped:
    """A valid event as Omnisend knows it: whose it is (the email), its tag, and the contact
    fields of an entry (none for an exit). Made per event: it writes its own `__init__` (see
    `connector.core.events`)."""

    email: Final[str]
    tag: Final[str]
    fields: Final[dict[str, Any]]

    def __init__(self, email: str, tag: str, fields: dict[str, Any]) -> None:
        self.email = email
        self.tag = tag
        self.fields = fields


class Mapper:
    """Validates a decoded event and maps it to a `ContactChange` of export number `export`."""

    def __init__(self, mapping: Mapping, export: int = 0) -> None:
        self.mapping = mapping
        self.export = export
        # (segment id, segment name) -> its tag: formatted once per segment, not per event.
        self._tags: dict[tuple[str, str], str] = {}

    def map(self, change: SegmentChange, now_ms: int) -> Mapped:
        """Raises `InvalidRecord` (stage `validate`) for events Omnisend cannot take."""
        _check_event(change, now_ms)
        email = self._email(change.profile)
        fields = self.contact_fields(change) if change.entered else {}
        return Mapped(email, self.tag(change), fields)

    def tag(self, change: SegmentChange) -> str:
        return self.tag_of(change.segment_id, change.segment_name)

    def tag_of(self, segment_id: str, segment_name: str) -> str:
        key = (segment_id, segment_name)
        tag = self._tags.get(key)
        if tag is None:
            if len(self._tags) >= MAX_KNOWN_TAGS:
                self._tags.clear()  # segments come and go: keep the recent ones
            tag = self._tags[key] = self.mapping.tag_template.format(
                segment_name=segment_name, segment_id=segment_id
            )
        return tag

    def _email(self, profile: dict[str, str]) -> str:
        raw = profile.get(self.mapping.email_attribute)
        if raw is None or not raw.strip():
            raise InvalidRecord(
                "missing_email", "validate", f"no {self.mapping.email_attribute!r} attribute"
            )
        email = normalise_email(raw, self.mapping.preserve_email_case)
        if not is_valid_email(email):
            # The address itself is personal data: say what is wrong, not what it is.
            raise InvalidRecord(
                "invalid_email", "validate", f"not a valid address ({len(email)} characters)"
            )
        return email

    def contact_fields(self, change: SegmentChange) -> dict[str, Any]:
        """The Omnisend contact fields of an ENTERED event (no identifiers, never tags)."""
        out: dict[str, Any] = {}
        for target, attribute in self.mapping.fields.items():
            value = change.profile.get(attribute)
            if value is None or not value.strip():
                continue
            value = value.strip()
            if target == "country" and (code := _country_code(value)) is not None:
                out["countryCode"] = code  # a two-letter value is an ISO code
            elif target in _FORMATTED:
                sendable = _FORMATTED[target](value)
                if sendable is not None:  # Omnisend would refuse the whole contact for it
                    out[target] = sendable
            else:
                out[target] = value
        custom = {
            name: value.strip()
            for name, attribute in self.mapping.custom_properties.items()
            if (value := change.profile.get(attribute)) is not None and value.strip()
        }
        if custom:
            out["customProperties"] = custom
        status_attr = self.mapping.email_status_attribute
        if status_attr and (status := change.profile.get(status_attr)) in CHANNEL_STATUSES:
            changed = datetime.fromtimestamp(change.occurred_at_ms / 1000, UTC)
            out[EMAIL_STATUS_FIELD] = {
                "status": status,
                "statusChangedAt": changed.isoformat().replace("+00:00", "Z"),
            }
        return out


def _check_event(change: SegmentChange, now_ms: int) -> None:
    if change.occurred_at_ms <= 0 or change.occurred_at_ms > now_ms + MAX_FUTURE_SKEW_MS:
        raise InvalidRecord(
            "invalid_timestamp", "validate", f"occurred_at {change.occurred_at_ms} is out of range"
        )
    for name in ("event_id", "segment_id", "segment_name"):
        if not getattr(change, name).strip():
            raise InvalidRecord("invalid_event", "validate", f"{name} is empty")
