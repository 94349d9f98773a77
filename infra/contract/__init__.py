"""The public, versioned event contract for downstream subscribers (ADR 0011).

``messages`` holds the pydantic models (schema version 1), ``mapping`` the one function from an
internal aggregate event to its public message, ``asyncapi`` the generated AsyncAPI document.
"""

from infra.contract.mapping import MAPPED_TOPICS, SKIPPED, SKIPPED_TOPICS, event_id, to_public
from infra.contract.messages import BY_TYPE, EVENT_TYPES, SCHEMA_VERSION, Envelope, parse_message

__all__ = [
    "BY_TYPE",
    "EVENT_TYPES",
    "Envelope",
    "MAPPED_TOPICS",
    "SCHEMA_VERSION",
    "SKIPPED",
    "SKIPPED_TOPICS",
    "event_id",
    "parse_message",
    "to_public",
]
