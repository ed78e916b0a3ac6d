"""What `omnisend-connector run --help` says of each setting, in this order (and the README's
table of them). A test checks that this list and the `Settings` fields agree. The defaults
shown are the fields' own (one place for each default), except where the default is worked out."""

from __future__ import annotations

from connector.settings import Settings

_DESCRIPTIONS: tuple[tuple[str, str], ...] = (
    ("KAFKA_BOOTSTRAP_SERVERS", "Kafka brokers, host:port[,host:port]"),
    ("KAFKA_TOPIC", "topic of SegmentMembershipChange events"),
    ("KAFKA_GROUP_ID", "consumer group; replicas of one group share the brand's budget"),
    ("KAFKA_DLQ_TOPIC", "dead-letter topic"),
    (
        "KAFKA_RESULTS_TOPIC",
        "optional: one JSON record per consumed record, its outcome (README: Results topic)",
    ),
    (
        "KAFKA_CFG_<NAME>",
        "any librdkafka property, e.g. KAFKA_CFG_SECURITY_PROTOCOL=SASL_SSL (not auto-commit or group id)",
    ),
    (
        "VALUE_FORMAT",
        "confluent (Schema Registry wire format) or avro (plain Avro, bundled schema)",
    ),
    ("SCHEMA_REGISTRY_URL", "Confluent-compatible Schema Registry (required for confluent)"),
    ("SCHEMA_REGISTRY_USER_INFO", "user:password for the registry's basic auth"),
    ("OMNISEND_API_KEY", "Omnisend API key (or OMNISEND_API_KEY_FILE)"),
    ("OMNISEND_API_KEY_FILE", "file holding the API key, e.g. a mounted Kubernetes Secret"),
    ("OMNISEND_BASE_URL", "Omnisend API base URL (point it at the simulator to rehearse)"),
    ("CONNECTION_NAME", "value of the `connection` label of the metrics"),
    (
        "OMNISEND_PRIVACY_ACKNOWLEDGED",
        "required true: you confirm personal data may leave your compliance boundary for Omnisend",
    ),
    ("TAG_TEMPLATE", "tag per segment; may use {segment_name} and {segment_id}"),
    ("EMAIL_ATTRIBUTE", "profile attribute holding the email"),
    (
        "FIELD_MAP",
        "overrides of omnisendField=profile_attribute, comma separated; field= drops one",
    ),
    ("EMAIL_PRESERVE_CASE", "keep the email's case (Omnisend compares emails case-sensitively)"),
    (
        "EMAIL_STATUS_ATTRIBUTE",
        "profile attribute with an authoritative email status; unset: subscriptions untouched",
    ),
    ("METRICS_PORT", "port of /metrics, /healthz and /readyz"),
    ("METRICS_HOST", "address the metrics port listens on"),
    ("LOG_LEVEL", "DEBUG, INFO, WARNING or ERROR"),
    ("LOG_FORMAT", "json, console, or auto (console on a terminal, else JSON)"),
    (
        "EMAIL_HASH_KEY",
        "key of the HMAC that stands in for emails in logs; set it to correlate across restarts",
    ),
    ("SHUTDOWN_TIMEOUT_S", "on SIGTERM, time to finish and commit accepted work"),
    ("REVOKE_TIMEOUT_S", "on a rebalance, time to finish work before partitions go"),
    ("COMMIT_INTERVAL_S", "how often done offsets are committed"),
    ("MAX_IN_FLIGHT_RECORDS", "records whose fate is unknown before partitions are paused"),
    ("MAX_IN_FLIGHT_BYTES", "bytes of such records before partitions are paused"),
    (
        "MAX_VALUE_BYTES",
        "larger values go to the DLQ as oversized_value; the DLQ producer's message.max.bytes is this plus 65536 unless set",
    ),
    (
        "DEDUPE_CACHE_SIZE",
        "event ids remembered for de-duplication (the last half to all of them), ~12 bytes each",
    ),
    (
        "KNOWN_CONTACTS_CACHE_SIZE",
        "contacts per connection (and export) whose fields Omnisend is known to hold, ~36 bytes each: a known contact whose fields did not change needs no upsert",
    ),
    (
        "APPLIED_CHANGES_CACHE_SIZE",
        "(contact, segment) memberships per connection whose last change is remembered, ~24 bytes each: a change older than it is recognised as superseded",
    ),
    (
        "DLQ_MAX_INVALID_SHARE",
        "stop (exit 4) when more than this share of recent records is invalid; 1 never stops",
    ),
    (
        "DLQ_WINDOW_RECORDS",
        "how many recent records that share is measured over (at least 100 are needed)",
    ),
    ("RATE_LIMIT_PER_MINUTE", "the brand's request limit per window"),
    ("TAG_RATE_LIMIT_PER_MINUTE", "the brand's /contacts/tags limit per window"),
    ("RATE_LIMIT_HEADROOM", "share of the limits this connector may use"),
    (
        "RATE_LIMIT_WINDOW_S",
        "length of Omnisend's sliding window (shorter only for a time-scaled simulator)",
    ),
    ("REQUEST_TIMEOUT_S", "timeout of every Omnisend request"),
    ("UPSERT_LINGER_S", "longest wait for more contacts to fill a batch"),
    ("TAG_LINGER_S", "longest wait for more emails to fill a tag call"),
    ("TAG_SETTLE_S", "wait after a tag call before the opposite call for the same contact and tag"),
    (
        "BATCH_DEADLINE_S",
        "a batch Omnisend has not finished by then is stuck: its contacts are sent again",
    ),
)
_SHOWN_DEFAULTS = {"KAFKA_DLQ_TOPIC": "<KAFKA_TOPIC>.dlq", "EMAIL_HASH_KEY": "(random)"}


def _shown_default(name: str) -> str:
    field = Settings.model_fields.get(name.lower())
    if name in _SHOWN_DEFAULTS or field is None:  # worked out, or a family like KAFKA_CFG_<NAME>
        return _SHOWN_DEFAULTS.get(name, "")
    if field.is_required():
        return "(required)"
    default = field.default
    if isinstance(default, bool):
        return str(default).lower()
    if isinstance(default, float):
        return format(default, "g")
    return "" if default is None else str(default)


SETTINGS_HELP: list[tuple[str, str, str]] = [
    (name, _shown_default(name), description) for name, description in _DESCRIPTIONS
]
