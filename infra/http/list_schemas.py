"""Response shapes of the finding endpoints (``GET /recipients``, ``/expenses``, ``/claims``,
``/payments``; ADR 0019): a page of items and the opaque cursor of the next page."""

from __future__ import annotations

from pydantic import BaseModel, Field


class _Page(BaseModel):
    next_cursor: str | None = Field(None, description="pass as `cursor` for the next page; null on the last page")


class RecipientItem(BaseModel):
    recipient: str
    name: str
    street: str
    id_number: str = Field(description="masked: region and the last four characters only")
    enrolled_at: str


class ExpenseRef(BaseModel):
    expense: str
    handle: str | None = None


class ExpenseItem(BaseModel):
    expense: str
    handle: str | None = None
    recipient: str
    street: str
    service_date: str
    invoice_date: str
    invoice_no: str
    total: str
    source: str
    recorded_at: str
    status: str = Field(description="recorded, claimed, decided or paid")
    claim: str | None = None
    schemes: list[str] = Field(default_factory=list, description="the schemes that aided it")
    aid: str | None = Field(None, description="the aid first decided")


class ClaimItem(BaseModel):
    claim: str
    recipient: str
    street: str
    channel: str
    lodged_on: str
    status: str = Field(description="lodged, reviewed, approved, rejected or paid")
    expenses: list[ExpenseRef]


class PaymentItem(BaseModel):
    payment: str = Field(description="`<recipient uuid>@<event version>`")
    recipient: str
    street: str
    claim: str | None = None
    channel: str
    paid_at: str
    month: str = Field(description="the month paid, China Standard Time")
    total: str
    to_person: str
    by_scheme: dict[str, str]
    expenses: list[ExpenseRef]


class RecipientPage(_Page):
    items: list[RecipientItem]


class ExpensePage(_Page):
    items: list[ExpenseItem]


class ClaimPage(_Page):
    items: list[ClaimItem]


class PaymentPage(_Page):
    items: list[PaymentItem]
