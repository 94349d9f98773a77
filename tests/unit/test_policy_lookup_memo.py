"""``PolicyBook.lookup`` remembers its answers (issue 16) and forgets them when the book changes;
``PolicyBook.known_at`` remembers the latest publication alike.

Given a book with a rate in force, when a later publication of the same parameter is added (or a
book is copied and the copy extended), then the next lookup answers with the later version, and
the book compares, copies and lists its fields as a book that never remembered anything.
"""

from __future__ import annotations

import copy
import dataclasses
from datetime import date, datetime
from decimal import Decimal

from ledger.policy.params import ParameterVersion, PolicyBook
from ledger.values import CST

NAME = "shanghai.medical_aid.rate.inpatient.dibao"


def _v(value: str, published: int, start: date = date(2026, 1, 1)) -> ParameterVersion:
    return ParameterVersion(NAME, Decimal(value), start, None, "[001 二(二)4]", False,
                            datetime(2026, 1, published, tzinfo=CST), "amendment")


def test_a_later_publication_is_found_after_the_first_answer_was_remembered():
    first, later = _v("0.70", 1), _v("0.80", 2)
    book = PolicyBook([first])
    assert book.lookup(NAME, date(2026, 5, 1)) is first
    assert book.lookup(NAME, date(2025, 5, 1)) is None
    book.add(later)
    assert book.lookup(NAME, date(2026, 5, 1)) is later
    book.extend([_v("0.90", 3, start=date(2026, 6, 1))])
    assert book.lookup(NAME, date(2026, 5, 1)) is later
    assert book.lookup(NAME, date(2026, 7, 1)).value == Decimal("0.90")


def test_a_copy_extended_answers_for_itself_and_leaves_the_original_as_it_was():
    first = _v("0.70", 1)
    book = PolicyBook([first])
    assert book.lookup(NAME, date(2026, 5, 1)) is first
    twin = copy.deepcopy(book)
    twin.add(_v("0.80", 2))
    assert twin.lookup(NAME, date(2026, 5, 1)).value == Decimal("0.80")
    assert book.lookup(NAME, date(2026, 5, 1)) is first


def test_remembering_changes_no_field_equality_or_repr():
    fresh, used = PolicyBook([_v("0.70", 1)]), PolicyBook([_v("0.70", 1)])
    fresh._index()
    used.lookup(NAME, date(2026, 5, 1))
    assert [f.name for f in dataclasses.fields(used)] == ["versions", "_by_name", "_hash"]
    assert used == fresh and repr(used) == repr(fresh)


def test_known_at_cuts_a_publication_added_after_it_was_first_asked():
    first, later = _v("0.70", 1), _v("0.80", 3)
    book = PolicyBook([first])
    between = datetime(2026, 1, 2, tzinfo=CST)
    assert book.known_at(between) is book  # everything published by then: the book itself
    book.add(later)
    cut = book.known_at(between)
    assert cut is not book and cut.versions == [first]
    assert cut.lookup(NAME, date(2026, 5, 1)) is first and book.lookup(NAME, date(2026, 5, 1)) is later
    assert book.known_at(datetime(2026, 1, 3, tzinfo=CST)) is book
    assert PolicyBook().known_at(between).versions == []
