"""The AsyncAPI document of the public events, generated from the relay's faststream broker.

``python -m infra.contract.asyncapi`` (or ``ledger relay asyncapi``) rewrites ``docs/asyncapi.json``;
a test checks that the committed document equals a fresh generation, so the document can never
drift from the contract. It describes the default broker (RabbitMQ); the message schemas are the
same on every broker (ADR 0011).

faststream 0.7 writes no message headers and no message descriptions, so :func:`generate` adds
them: the headers the relay sets (their names taken from the relay itself, so a header added
there without a description here fails the generation) and the delivery guarantee.
"""

from __future__ import annotations

import json
import sys
import uuid
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from faststream import FastStream
from faststream.specification import AsyncAPI

from infra.contract import messages as pm
from infra.contract.messages import SCHEMA_VERSION

DOCUMENT = Path(__file__).resolve().parents[2] / "docs" / "asyncapi.json"
#: A placeholder server, so that the document does not depend on anyone's environment.
SERVER_URL = "amqp://rabbitmq.example:5672/"

#: The delivery guarantee (ADR 0011), said once and repeated where a consumer looks.
DELIVERY = (
    "Delivery is at least once: the relay records its position only after the broker confirmed "
    "every message up to it, and after a crash or an outage re-sends from there, so a consumer "
    "sees some messages again, never a gap. The message_id (the AMQP message_id and correlation_id "
    "properties, the Ledger-Event-Id header, Nats-Msg-Id on JetStream; equal to the body's "
    "event_id) is the deduplication key: a repeat carries the same message_id and the same "
    "position. Positions strictly increase along one ledger store's log (one store, one stream; "
    "gaps are normal), and each queue bound to the exchange receives them in that order, a run of "
    "repeats after a relay restart aside: consuming one message at a time (prefetch 1, nack on "
    "failure), a message whose position is at or below the last one you processed from that store "
    "is a repeat. Two messages are not events and are exceptions: chain.checkpoint_sealed carries "
    "the position of the last event it seals (keep it by its number) and relay.replay_completed "
    "the replay's end. The Deduplicator of infra/contract/consumer.py does exactly that."
)

INFO = (
    "Public events of the medical-aid ledger, schema version 1. " + DELIVERY + " Every message "
    "carries event_id, position (the ledger's notification id), recipient_key (the recipient "
    "aggregate id, never an id number or a name), recorded_at, effective_date, type and "
    "schema_version. Money is a string with two decimals. RabbitMQ: topic exchange ledger.events, "
    "routing key recipient.<recipient_key>.<type>; the control message relay.replay_completed "
    "closes a replay and is never published on the exchange."
)

MESSAGE = (
    "At least once: drop a repeat by its message_id (= event_id), or by its position when it is at "
    "or below the last position processed from the same ledger store."
)

#: What each header the relay sets means (``infra.relay._headers``); ``{type}`` is filled in.
HEADERS: dict[str, dict[str, Any]] = {
    "Ledger-Event-Id": {
        "type": "string",
        "format": "uuid",
        "description": "the message_id: equal to the body's event_id, the AMQP message_id and correlation_id; the deduplication key (a repeat carries the same value)",
    },
    "Ledger-Position": {
        "type": "string",
        "pattern": "^[0-9]+$",
        "description": "the body's position, in decimal: strictly increasing along the ledger store's log; at or below the last position processed from that store = a repeat",
    },
    "Ledger-Recipient-Key": {
        "type": "string",
        "description": "the body's recipient_key (the recipient aggregate id); empty for policy events",
    },
    "Ledger-Type": {"type": "string", "const": "{type}", "description": "the body's type"},
    "Ledger-Schema-Version": {"type": "string", "const": str(SCHEMA_VERSION), "description": "the body's schema_version"},
}


def asyncapi_app(kind: str = "rabbit") -> FastStream:
    from infra.relay import Topology, build_broker

    broker, _ = build_broker(Topology(kind=kind, url="amqp://guest:guest@127.0.0.1:5672/" if kind == "rabbit" else "nats://127.0.0.1:4222"), specification_url=SERVER_URL if kind == "rabbit" else None)
    spec = AsyncAPI(broker, title="Medical-aid ledger events (医疗救助台账)", version=str(SCHEMA_VERSION), description=INFO)
    return FastStream(broker, specification=spec)


def relay_header_names() -> list[str]:
    """The names of the headers the relay puts on every message, asked of the relay."""
    from infra.relay import _headers

    sample = pm.ReplayCompleted(
        event_id=uuid.UUID(int=0),
        position=0,
        recipient_key=None,
        recorded_at=datetime(2000, 1, 1, tzinfo=timezone.utc),
        payload=pm.ReplayCompletedPayload(up_to_position=0),
    )
    return list(_headers(sample))


def _headers_schema(type_: str) -> dict[str, Any]:
    names = relay_header_names()
    missing = [n for n in names if n not in HEADERS]
    if missing:
        raise KeyError(f"the relay sets headers the AsyncAPI document does not describe: {missing} (infra/contract/asyncapi.py HEADERS)")
    properties = {n: {k: (v.replace("{type}", type_) if isinstance(v, str) else v) for k, v in HEADERS[n].items()} for n in names}
    return {"type": "object", "description": "application headers set by the relay on every message", "properties": properties, "required": names}


def _add_delivery(document: dict[str, Any]) -> dict[str, Any]:
    """Message headers and descriptions, which faststream does not write."""
    for channel in document["channels"].values():
        for ref in channel["messages"].values():
            key = ref["$ref"].rsplit("/", 1)[-1]
            message = document["components"]["messages"][key]
            type_ = key.split(":", 1)[0]
            message["description"] = MESSAGE
            message["headers"] = _headers_schema(type_)
            message["correlationId"]["description"] = "the message_id: equal to the body's event_id (the deduplication key)"
    return document


def generate() -> str:
    document = _add_delivery(asyncapi_app().schema.to_specification().to_jsonable())
    return json.dumps(document, ensure_ascii=False, indent=2, sort_keys=True) + "\n"


def write(path: Path = DOCUMENT) -> Path:
    path.write_text(generate(), encoding="utf-8")
    return path


if __name__ == "__main__":  # pragma: no cover
    out = write(Path(sys.argv[1]) if len(sys.argv) > 1 else DOCUMENT)
    print(out)
