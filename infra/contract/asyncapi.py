"""The AsyncAPI document of the public events, generated from the relay's faststream broker.

``python -m infra.contract.asyncapi`` (or ``ledger relay asyncapi``) rewrites ``docs/asyncapi.json``;
a test checks that the committed document equals a fresh generation, so the document can never
drift from the contract. It describes the default broker (RabbitMQ); the message schemas are the
same on every broker (ADR 0011).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from faststream import FastStream
from faststream.specification import AsyncAPI

from infra.contract.messages import SCHEMA_VERSION

DOCUMENT = Path(__file__).resolve().parents[2] / "docs" / "asyncapi.json"
#: A placeholder server, so that the document does not depend on anyone's environment.
SERVER_URL = "amqp://rabbitmq.example:5672/"


def asyncapi_app(kind: str = "rabbit") -> FastStream:
    from infra.relay import Topology, build_broker

    broker, _ = build_broker(Topology(kind=kind, url="amqp://guest:guest@127.0.0.1:5672/" if kind == "rabbit" else "nats://127.0.0.1:4222"), specification_url=SERVER_URL if kind == "rabbit" else None)
    spec = AsyncAPI(
        broker,
        title="Medical-aid ledger events (医疗救助台账)",
        version=str(SCHEMA_VERSION),
        description=(
            "Public events of the medical-aid ledger, schema version 1. Every message carries event_id "
            "(also the broker message id: drop repeats by it), position (the ledger's notification id), "
            "recipient_key (the recipient aggregate id, never an id number or a name), recorded_at, "
            "effective_date, type and schema_version. Money is a string with two decimals. RabbitMQ: "
            "topic exchange ledger.events, routing key recipient.<recipient_key>.<type>."
        ),
    )
    return FastStream(broker, specification=spec)


def generate() -> str:
    document = asyncapi_app().schema.to_specification().to_jsonable()
    return json.dumps(document, ensure_ascii=False, indent=2, sort_keys=True) + "\n"


def write(path: Path = DOCUMENT) -> Path:
    path.write_text(generate(), encoding="utf-8")
    return path


if __name__ == "__main__":  # pragma: no cover
    out = write(Path(sys.argv[1]) if len(sys.argv) > 1 else DOCUMENT)
    print(out)
