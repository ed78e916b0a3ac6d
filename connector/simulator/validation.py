"""Validation of request bodies against the 2026-03-15 contract; every failure is collected so a
400 lists them all at once, as Omnisend does."""

from __future__ import annotations

import re
from datetime import date, datetime
from typing import Any

from connector.simulator.problems import FieldError

EMAIL_RE = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s.]+$")
PHONE_RE = re.compile(r"^\+[1-9]\d{6,14}$")
CHANNEL_STATUSES = ("subscribed", "nonSubscribed", "unsubscribed")
STRING_FIELDS = (
    "firstName",
    "lastName",
    "address",
    "city",
    "state",
    "postalCode",
    "country",
    "countryCode",
    "birthdate",
    "createdAt",
)
MAX_TAGS_PER_CONTACT = 100
MAX_SELECTOR_ITEMS = 250
MAX_TAGS_PER_CALL = 100


_RFC_3339 = re.compile(r"\d{4}-\d{2}-\d{2}[Tt]\d{2}:\d{2}:\d{2}(\.\d+)?([Zz]|[+-]\d{2}:\d{2})")


def parse_time(value: str) -> float | None:
    """RFC 3339 to epoch seconds, or None when it is not a timestamp (a bare date, or a time
    without its zone, is not one)."""
    if not _RFC_3339.fullmatch(value):
        return None
    try:
        return datetime.fromisoformat(value.upper().replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


def _is_date(value: str) -> bool:
    if not re.fullmatch(r"\d{4}-\d{2}-\d{2}", value):
        return False
    try:
        date.fromisoformat(value)
    except ValueError:
        return False
    return True


class Errors:
    """Collects field errors."""

    def __init__(self) -> None:
        self.items: list[FieldError] = []

    def add(self, field: str, code: str, message: str) -> None:
        self.items.append(FieldError(field, code, message))

    def string_list(self, body: dict[str, Any], field: str, max_items: int, min_items: int) -> None:
        value = body.get(field)
        if value is None:
            return
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            self.add(field, "invalid_type", "Must be an array of strings")
        elif len(value) > max_items:
            self.add(field, "too_many_items", f"Must have at most {max_items} items")
        elif len(value) < min_items:
            self.add(field, "too_few_items", f"Must have at least {min_items} item(s)")


def validate_contact(body: Any, *, require_identifier: bool) -> list[FieldError]:
    """Field errors of a ContactRequest body."""
    errors = Errors()
    if not isinstance(body, dict):
        errors.add("body", "invalid_type", "Must be a JSON object")
        return errors.items
    for name in STRING_FIELDS:
        if name in body and not isinstance(body[name], str):
            errors.add(name, "invalid_type", "Must be a string")
    if "gender" in body and body["gender"] not in ("m", "f"):
        errors.add("gender", "invalid_value", "Must be one of: m, f")
    birthdate = body.get("birthdate")
    if isinstance(birthdate, str) and not _is_date(birthdate):
        errors.add("birthdate", "invalid_format", "Must be a date in YYYY-MM-DD format")
    code = body.get("countryCode")
    if isinstance(code, str) and not (len(code) == 2 and code.isascii() and code.isalpha()):
        errors.add("countryCode", "invalid_format", "Must be an ISO 3166-1 alpha-2 code")
    if "customProperties" in body and not isinstance(body["customProperties"], dict):
        errors.add("customProperties", "invalid_type", "Must be an object")
    errors.string_list(body, "tags", MAX_TAGS_PER_CONTACT, 0)
    _validate_identifiers(body.get("identifiers"), errors, require_identifier)
    return errors.items


def _validate_identifiers(idents: Any, errors: Errors, required: bool) -> None:
    if idents is None:
        if required:
            errors.add("identifiers", "required", "At least one identifier is required")
        return
    if not isinstance(idents, list) or (required and not idents):
        errors.add("identifiers", "invalid_value", "Must be a non-empty array of identifiers")
        return
    for i, ident in enumerate(idents):
        _validate_identifier(f"identifiers[{i}]", ident, errors)


def _validate_identifier(path: str, ident: Any, errors: Errors) -> None:
    if not isinstance(ident, dict):
        errors.add(path, "invalid_type", "Must be an object")
        return
    kind, value = ident.get("type"), ident.get("id")
    if kind not in ("email", "phone"):
        errors.add(f"{path}.type", "invalid_value", "Must be one of: email, phone")
    if not isinstance(value, str) or not value:
        errors.add(f"{path}.id", "required", "Identifier value is required")
    elif kind == "email" and not EMAIL_RE.match(value):
        errors.add(f"{path}.id", "invalid_format", "Must be a valid email address")
    elif kind == "phone" and not PHONE_RE.match(value):
        errors.add(f"{path}.id", "invalid_format", "Must be a phone number in E.164 format")
    if "sendWelcomeMessage" in ident and not isinstance(ident["sendWelcomeMessage"], bool):
        errors.add(f"{path}.sendWelcomeMessage", "invalid_type", "Must be a boolean")
    channels = ident.get("channels")
    if channels is None:
        return
    if not isinstance(channels, dict):
        errors.add(f"{path}.channels", "invalid_type", "Must be an object")
        return
    for name, channel in channels.items():
        _validate_channel(f"{path}.channels.{name}", name, channel, errors)


def _validate_channel(path: str, name: str, channel: Any, errors: Errors) -> None:
    if name not in ("email", "sms"):
        errors.add(path, "invalid_value", "Channel must be one of: email, sms")
    if not isinstance(channel, dict) or channel.get("status") not in CHANNEL_STATUSES:
        errors.add(
            f"{path}.status", "invalid_value", "Must be one of: " + ", ".join(CHANNEL_STATUSES)
        )
        return
    changed = channel.get("statusChangedAt")
    if changed is not None and (not isinstance(changed, str) or parse_time(changed) is None):
        errors.add(f"{path}.statusChangedAt", "invalid_format", "Must be an RFC 3339 timestamp")


def validate_tag_call(body: Any) -> list[FieldError]:
    """Field errors of an AddTagsRequest / RemoveTagsRequest body."""
    errors = Errors()
    if not isinstance(body, dict):
        errors.add("body", "invalid_type", "Must be a JSON object")
        return errors.items
    if "tags" not in body:
        errors.add("tags", "required", "Field is required")
    else:
        errors.string_list(body, "tags", MAX_TAGS_PER_CALL, 1)
    for selector in ("contactIDs", "emails", "phones"):
        errors.string_list(body, selector, MAX_SELECTOR_ITEMS, 0)
    segment = body.get("segmentID")
    if segment is not None and not isinstance(segment, str):
        errors.add("segmentID", "invalid_type", "Must be a string")
    if not any(body.get(s) for s in ("contactIDs", "emails", "phones", "segmentID")):
        errors.add(
            "contactIDs",
            "required",
            "At least one of contactIDs, emails, phones or segmentID is required",
        )
    return errors.items
