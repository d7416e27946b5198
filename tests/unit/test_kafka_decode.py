"""`decode`: every way a message body can be unusable becomes a PoisonMessage naming why."""

from __future__ import annotations

import json

import pytest

from shared.events import DataClaim, TrainingEvent, model_dict
from shared.kafka import MAX_PAYLOAD_BYTES, PoisonMessage, decode

HASH = "f" * 64


def valid_claim() -> dict[str, object]:
    return model_dict(
        DataClaim(
            bucket="processed-data",
            object=f"{HASH}/train.parquet",
            test_object=f"{HASH}/test.parquet",
            meta_object=f"{HASH}/meta.json",
            size=10,
            rows=20,
            config_hash=HASH,
            identifier="ElBorn",
            dataset="ElBorn",
        )
    )


def encode(value: object) -> bytes:
    return json.dumps(value).encode("utf-8")


def test_valid_body_decodes_to_the_model() -> None:
    event = decode(encode(valid_claim()), DataClaim)

    assert isinstance(event, DataClaim)
    assert event.identifier == "ElBorn"


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (None, "empty message body"),
        (b"", "not valid JSON"),
        (b"{not json", "not valid JSON"),
        (b"\xff\xfe\x00binary", "not valid JSON"),
        (b"[1, 2, 3]", "must be a JSON object, got list"),
        (b'"a string"', "must be a JSON object, got str"),
        (b"null", "must be a JSON object, got NoneType"),
    ],
)
def test_undecodable_body_is_poison_with_the_reason(raw: bytes | None, reason: str) -> None:
    with pytest.raises(PoisonMessage, match=reason):
        decode(raw, DataClaim)


def test_schema_violation_names_every_bad_field() -> None:
    body = {**valid_claim(), "rows": "many", "config_hash": "short"}
    body.pop("bucket")

    with pytest.raises(PoisonMessage) as raised:
        decode(encode(body), DataClaim)

    message = str(raised.value)
    assert message.startswith("schema violation for DataClaim")
    for field in ("rows", "config_hash", "bucket"):
        assert f"{field}:" in message


def test_unknown_schema_version_is_poison_naming_the_version() -> None:
    with pytest.raises(PoisonMessage, match="unsupported schema version v=2; this consumer reads v=1"):
        decode(encode({**valid_claim(), "v": 2}), DataClaim)


def test_message_for_another_topic_fails_this_topics_schema() -> None:
    with pytest.raises(PoisonMessage, match="schema violation for TrainingEvent"):
        decode(encode(valid_claim()), TrainingEvent)


def test_oversized_body_is_poison_before_parsing() -> None:
    raw = b'{"pad": "' + b"x" * MAX_PAYLOAD_BYTES + b'"}'

    with pytest.raises(PoisonMessage, match=f"exceeds {MAX_PAYLOAD_BYTES}"):
        decode(raw, DataClaim)
