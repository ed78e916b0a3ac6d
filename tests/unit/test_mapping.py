"""Profile attributes to Omnisend fields, email rules, tags and the upsert body."""

from __future__ import annotations

from typing import Any

import pytest

from connector.core.codec import PlainAvroDecoder, encode_plain
from connector.core.errors import ConfigError, InvalidRecord
from connector.core.mapping import Mapped, Mapper, Mapping
from connector.omnisend.client import contact_request
from tests.events import event

NOW = 1_800_000_000_000


def mapped(mapping: Mapping | None = None, **kwargs: Any) -> Mapped:
    change = PlainAvroDecoder().decode(encode_plain(event(**kwargs)))
    return Mapper(mapping or Mapping()).map(change, NOW)


def test_default_mapping_and_two_letter_country() -> None:
    c = mapped(
        first_name="Ann",
        last_name="Lee",
        country="lt",
        city="Vilnius",
        postal_code="01100",
        occurred_at=NOW - 1000,
    )
    assert c.fields == {
        "firstName": "Ann",
        "lastName": "Lee",
        "countryCode": "LT",
        "city": "Vilnius",
        "postalCode": "01100",
    }
    assert c.tag == "segment: VIP"


@pytest.mark.parametrize(
    ("profile", "expected"),
    [
        ({"born": "1990-02-01"}, {"birthdate": "1990-02-01"}),
        ({"born": "01/02/1990"}, {}),  # Omnisend takes YYYY-MM-DD only
        ({"born": "1990-02-30"}, {}),  # no such day
        ({"born": "1990-2-1"}, {}),
        ({"sex": "f"}, {"gender": "f"}),
        ({"sex": "female"}, {}),  # m or f only
        ({"code": "de"}, {"countryCode": "DE"}),
        ({"code": "DEU"}, {}),  # alpha-2 only
        ({"code": "D1"}, {}),
        ({"land": "РФ"}, {"country": "РФ"}),  # two letters, not a code: sent as a name
        ({"land": "lt"}, {"countryCode": "LT"}),
    ],
)
def test_a_value_omnisend_would_refuse_is_left_out_not_the_contact(
    profile: dict[str, str], expected: dict[str, str]
) -> None:
    """Omnisend refuses a whole contact for one malformed birthdate, gender or country code:
    sent, the contact would not be synced nor tagged. The value is left out instead."""
    fields = {"birthdate": "born", "gender": "sex", "countryCode": "code", "country": "land"}
    change = mapped(Mapping(fields=fields), occurred_at=NOW, **profile)
    assert change.fields == expected


def test_country_name_stays_a_name() -> None:
    assert mapped(country="Lithuania", occurred_at=NOW).fields == {"country": "Lithuania"}


def test_email_is_trimmed_and_lower_cased_unless_configured() -> None:
    assert mapped(email="  Ann@Example.COM ", occurred_at=NOW).email == "ann@example.com"
    keep = Mapping(preserve_email_case=True)
    assert mapped(keep, email=" Ann@Example.COM", occurred_at=NOW).email == "Ann@Example.COM"


@pytest.mark.parametrize(
    ("kwargs", "reason"),
    [
        ({"email": None}, "missing_email"),
        ({"email": "   "}, "missing_email"),
        ({"email": "not-an-email"}, "invalid_email"),
        ({"email": "a@b"}, "invalid_email"),
        ({"email": "a b@example.com"}, "invalid_email"),
        ({"occurred_at": 0}, "invalid_timestamp"),
        ({"occurred_at": NOW + 2 * 24 * 3600 * 1000}, "invalid_timestamp"),
        ({"event_id": " ", "occurred_at": NOW}, "invalid_event"),
    ],
)
def test_invalid_events(kwargs: dict[str, Any], reason: str) -> None:
    kwargs.setdefault("occurred_at", NOW)
    with pytest.raises(InvalidRecord) as info:
        mapped(**kwargs)
    assert info.value.reason == reason
    assert "example.com" not in info.value.detail  # no personal data in the reason


def test_exited_carries_no_fields() -> None:
    assert mapped(change="EXITED", first_name="Ann", occurred_at=NOW).fields == {}


@pytest.mark.parametrize(
    "template",
    [
        "{segment_name:d}",  # formatting raised ValueError on the first event
        "{segment_name!x}",
        "{segment_name:{foo}}",  # KeyError
        "{segment_name:.0}",  # an empty tag
        "{segment_name:>5000}",  # a tag of 5,000 characters
        "{segment_id!r}",
        "x{}",
        "{0}",
    ],
)
def test_a_tag_template_with_a_format_spec_or_conversion_is_refused_at_load(template: str) -> None:
    with pytest.raises(ConfigError, match="TAG_TEMPLATE"):
        Mapping(tag_template=template)


def test_tag_template_with_segment_id() -> None:
    c = mapped(Mapping(tag_template="cdp:{segment_id}"), occurred_at=NOW)
    assert c.tag == "cdp:seg-1"
    with pytest.raises(ConfigError, match="TAG_TEMPLATE"):
        Mapping(tag_template="{profile_id}")


def test_upsert_body_never_has_tags_and_never_welcomes() -> None:
    body = contact_request("a@example.com", {"firstName": "A"})
    assert body == {
        "firstName": "A",
        "identifiers": [{"type": "email", "id": "a@example.com", "sendWelcomeMessage": False}],
    }


def test_channel_status_only_when_configured() -> None:
    plain = mapped(occurred_at=NOW, email_status="subscribed")
    assert "channels" not in contact_request("a@example.com", plain.fields)["identifiers"][0]
    configured = mapped(
        Mapping(email_status_attribute="email_status"), occurred_at=NOW, email_status="unsubscribed"
    )
    before = dict(configured.fields)
    body = contact_request("a@example.com", configured.fields)
    assert body["identifiers"][0]["channels"]["email"]["status"] == "unsubscribed"
    assert not any(name.startswith("_") for name in body)  # the status is no contact field
    # The intent's fields stay as they were: they are its fingerprint, and may be sent again.
    assert configured.fields == before


def test_tags_stay_right_when_more_segments_come_than_the_mapper_remembers(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr("connector.core.mapping.MAX_KNOWN_TAGS", 3)
    mapper = Mapper(Mapping(tag_template="{segment_name} ({segment_id})"))
    for round_ in range(3):
        for n in range(7):
            segment_id, name = f"seg-{n}", f"Segment {n % 4}"  # names shared, ids not
            raw = event(segment_id=segment_id, segment_name=name, occurred_at=NOW - round_)
            change = PlainAvroDecoder().decode(encode_plain(raw))
            assert mapper.map(change, NOW).tag == f"{name} ({segment_id})"
    assert len(mapper._tags) <= 3
