"""A pool worker's opened store and engine (``projections.common.WorkerOpened``): opened once per
key, and what another key's task finds open is closed first."""

from __future__ import annotations

from projections.common import WorkerOpened


class _Thing:
    def __init__(self, name: str, log: list[str]):
        self.name, self.log = name, log

    def close(self) -> None:
        self.log.append(f"close {self.name}")


class _Engine(_Thing):
    def dispose(self) -> None:
        self.log.append(f"dispose {self.name}")


def test_same_key_opens_once_and_another_key_closes_what_was_open() -> None:
    log: list[str] = []
    kept = WorkerOpened()
    opened = []

    def open_(name: str):
        def go():
            opened.append(name)
            return (_Thing(f"{name}-app", log), _Engine(f"{name}-engine", log))
        return go

    first = kept.get(("a", "url"), open_("a"))
    # given a worker that opened store a, when its next task asks for a again, then it is reused
    assert kept.get(("a", "url"), open_("a")) is first
    assert opened == ["a"] and log == []
    # when a task asks for store b, then a's application is closed and its engine disposed first
    second = kept.get(("b", "url"), open_("b"))
    assert second is not first and opened == ["a", "b"]
    assert log == ["close a-app", "dispose a-engine"]
    kept.close()
    assert log[-2:] == ["close b-app", "dispose b-engine"]
    # and a closed one opens again
    kept.get(("b", "url"), open_("b"))
    assert opened == ["a", "b", "b"]
