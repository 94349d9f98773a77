"""Group commit: many commands, one transaction (batch sources only).

The online path saves one command per transaction (``LedgerCore.run``). A batch source (the
免申即享 monthly batch, its signatures, the demo's replay, a bulk import) runs many commands in a
row, and on PostgreSQL most of each one's time is the commit's wait. A :class:`Group` runs them
through the same handlers and holds what they save; :meth:`Group.commit` writes the events of
all of them with one ``Application.save`` (one ``insert_events``, one transaction).

- **An identity map.** Inside a group, ``repository.get`` of an aggregate the group already
  holds returns that object, pending events and all: a second command on the same recipient sees
  the first one's expense, claim or decision, and the recipient is saved once.
- **Per-command savepoints.** Before each command (nested ones too: a batch signature runs a
  review per claim) the group notes every held aggregate's version and pending events. A command
  that a rule rejects, or that raises, is rolled back to that point: an aggregate it touched is
  rebuilt from its stored version plus the pending events before the savepoint (one it loaded or
  created is dropped), so the other commands' work is kept. A rejection is then kept under its
  ``command_id`` as online; an exception goes to the caller (``run_many`` returns it in place
  of the result).
- **Idempotency holds.** Each command's ``CommandRecord`` is saved with the group, so a retried
  group (or a retried command, inside the group or later) gets the first result and applies
  nothing twice.
- **A conflict at commit** (another writer saved one of the same aggregates first, or the store
  was busy) loses nothing: the group drops what it held and runs each of its commands again on
  its own, through ``LedgerCore.run`` with its retries; :attr:`Group.outcomes` then holds the
  final results. Results returned before the commit are provisional until it succeeds: a caller
  that must not see a provisional id uses :meth:`LedgerCore.run_many`, which returns after.
- **Commands that read the log** (:data:`LOG_READERS`: the 免申即享 batch, a clearing run, a
  parameter change with its clearing run; they list recipients from the notification log, where
  the group's events are not yet) end the group: it commits first and they run on their own
  (the 免申即享 batch groups its own claims).
"""

from __future__ import annotations

import gc
import threading
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Iterable

from eventsourcing.persistence import IntegrityError, OperationalError

from commands import models as m
from ledger import errors

if TYPE_CHECKING:  # pragma: no cover
    from commands.core import LedgerCore, Result

#: Commands per transaction when the caller does not say: measured on PostgreSQL, 100 commands
#: (some 300–600 events) per save is past the point where the commit wait stops mattering and
#: keeps a failed save's re-run short (ADR 0017).
DEFAULT_SIZE = 100

#: Commands whose handlers list aggregates from the notification log: a group commits before
#: them and they run on their own.
LOG_READERS: tuple[type[m.Command], ...] = (m.AutoClaims, m.ClearingRun, m.SetParameter)

#: The application's env setting for the cyclic collector while its groups commit: ``freeze`` (the
#: import configuration, ``infra.demo.demo_env``: see :class:`_Collector`); unset or anything
#: else, the collector is left as it is (a server's or a test's process).
GC_ENV = "GROUP_COMMIT_GC"


@dataclass
class _Held:
    aggregate: Any
    stored_version: int  # the version in the store (before any pending event)


@dataclass
class Group:
    """The commands of one batch, held in memory until :meth:`commit` (see the module's text)."""

    app: "LedgerCore"
    size: int = DEFAULT_SIZE
    #: id -> the held aggregate (loaded or created by a command of this group)
    held: dict[Any, _Held] = field(default_factory=dict)
    #: the top-level commands since the last commit, in order, with their provisional outcomes
    commands: list[m.Command] = field(default_factory=list)
    pending: list[Any] = field(default_factory=list)
    #: every top-level outcome (Result or the exception a command raised), in order, final once
    #: committed
    outcomes: list[Any] = field(default_factory=list)
    #: transactions written by this group (commits that saved something)
    transactions: int = 0
    #: the saved events, in save order (events of rolled-back commands are left out at commit)
    order: list[Any] = field(default_factory=list)
    ordered: set[int] = field(default_factory=set)
    depth: int = 0
    closed: bool = False

    # -------------------------------------------------------------- the identity map
    def get(self, original: Callable[..., Any], aggregate_id: Any, kwargs: dict[str, Any]) -> Any:
        entry = self.held.get(aggregate_id)
        if entry is not None:
            return entry.aggregate
        aggregate = original(aggregate_id, **kwargs)
        self.held[aggregate_id] = _Held(aggregate, aggregate.version - len(aggregate.pending_events))
        return aggregate

    def hold(self, objs: Iterable[Any]) -> list[Any]:
        """What ``save`` does inside a group: keep the aggregates (their events stay pending) and
        note their new events in the order this save would have written them, so that the
        group's transaction writes every event in the order the commands saved them (the log
        stays in recorded-time order, as with one command per transaction)."""
        for obj in objs:
            if obj is None:
                continue
            for event in obj.pending_events:
                if id(event) not in self.ordered:
                    self.ordered.add(id(event))
                    self.order.append(event)
            entry = self.held.get(obj.id)
            if entry is None:
                self.held[obj.id] = _Held(obj, obj.version - len(obj.pending_events))
            elif entry.aggregate is not obj:
                # Loaded apart from the identity map (a versioned read, then changed): the group
                # cannot merge two copies of one aggregate; the conflict check at commit would
                # refuse it anyway.
                raise IntegrityError(f"aggregate {obj.id} changed through two copies in one group")
        return []

    # -------------------------------------------------------------- savepoints
    def _mark(self) -> dict[Any, tuple[Any, int]]:
        return {k: (e.aggregate, len(e.aggregate.pending_events)) for k, e in self.held.items()}

    def _rollback(self, mark: dict[Any, tuple[Any, int]]) -> None:
        """Back to ``mark``: aggregates first held after it are dropped if the command changed
        them, and an aggregate that gained events since is rebuilt as it stood at the mark."""
        app = self.app
        app._take_companions()  # noqa: SLF001 - the failed command's receipt-index changes
        app.forget_policy()
        for key in list(self.held):
            entry = self.held[key]
            agg = entry.aggregate
            before = mark.get(key)
            if before is None:
                if agg.pending_events or agg.version != entry.stored_version:
                    del self.held[key]
                    _evict(app, key)
                continue
            same, count = before
            if same is agg and len(agg.pending_events) == count:
                continue
            kept = list(same.pending_events[:count])  # an inner rollback kept at least this prefix
            _evict(app, key)
            base = None
            if entry.stored_version:
                base = app.repository.get(key, version=entry.stored_version)
            for event in kept:
                base = event.mutate(base)
            if base is None:  # created in this group before the mark with no event kept: impossible
                del self.held[key]
                continue
            base._pending_events = kept  # noqa: SLF001 - the library's pending list
            self.held[key] = _Held(base, entry.stored_version)

    # -------------------------------------------------------------- running
    def run(self, cmd: m.Command) -> "Result":
        """Run one command inside the group (the top-level call or a nested one)."""
        from commands.core import Result

        app = self.app
        top = self.depth == 0
        if top and isinstance(cmd, LOG_READERS):
            self.commit()
            try:
                with _suspended(app):
                    result = app.run(cmd)
            except BaseException as exc:
                self.outcomes.append(exc)
                raise
            self.outcomes.append(result)
            return result
        try:
            replay = app._replayed(cmd)  # noqa: SLF001 - a record held by this group counts too
            handler = app.handlers.get(type(cmd))
            if replay is None and handler is None:
                raise errors.InvalidInput(f"no handler for {type(cmd).__name__}", field="command")
        except BaseException as exc:  # e.g. IDEMPOTENCY_MISMATCH: this command's outcome, in its place
            if top:
                self._note(cmd, exc)
            raise
        if replay is not None:
            if top:
                self._note(cmd, replay)
            return replay
        mark = self._mark()
        self.depth += 1
        failure: BaseException | None = None
        try:
            try:
                result = handler(app, cmd)
            except errors.Rejected as exc:
                self._rollback(mark)
                result = app._rejected(cmd, Result.rejected(exc))  # noqa: SLF001 - held, not saved
        except BaseException as exc:
            self._rollback(mark)
            failure = exc
        finally:
            self.depth -= 1
        if top:
            self._note(cmd, result if failure is None else failure)  # may commit: between commands
        if failure is not None:
            raise failure
        return result

    def _note(self, cmd: m.Command, outcome: Any) -> None:
        self.commands.append(cmd)
        self.pending.append(outcome)
        if len(self.commands) >= self.size:
            self.commit()

    def commit(self) -> None:
        """Save everything held in one transaction; on a conflict, run the commands again one by one."""
        if self.depth:
            raise RuntimeError("a group commits between commands, not inside one")
        app = self.app
        held, commands, pending, order = self.held, self.commands, self.pending, self.order
        self.held, self.commands, self.pending, self.order, self.ordered = {}, [], [], [], set()
        live = {id(e) for h in held.values() for e in h.aggregate.pending_events}
        events = [e for e in order if id(e) in live]
        saved = {id(e) for e in events}
        changed = []
        for key, h in held.items():
            agg = h.aggregate
            if not agg.pending_events:
                continue
            clean = all(id(e) in saved for e in agg.pending_events)
            if not clean:
                # changed but never saved by its command: online that change would be dropped
                # with the aggregate; here the aggregate is dropped from the cache too
                _evict(app, key)
            agg.collect_events()  # the events go to the save below, in save order
            if clean:
                changed.append(agg)
        if events:
            from commands.core import retryable_write_error

            try:
                with _suspended(app), _own_reads(app):
                    # the events in save order, then their aggregates (now without pending
                    # events: the library registers them for its cache and snapshots)
                    app.save(*events, *changed)
                self.transactions += 1
                if _collector_mode(app) == "freeze":
                    COLLECTOR.committed(len(events))
            except (IntegrityError, OperationalError) as exc:
                for key in held:
                    _evict(app, key)
                if not retryable_write_error(exc):
                    raise
                app.forget_policy()
                pending = [self._alone(cmd, before) for cmd, before in zip(commands, pending)]
        if any(isinstance(e.aggregate, _policy_types()) for e in held.values()):
            app.forget_policy()
        self.outcomes.extend(pending)

    def _alone(self, cmd: m.Command, before: Any) -> Any:
        if isinstance(before, BaseException):
            return before  # it was rolled back and saved nothing: not run again
        try:
            with _suspended(self.app):
                return self.app.run(cmd)
        except Exception as exc:  # noqa: BLE001 - returned in its place, as run_many does
            return exc


class _Collector:
    """Python's cyclic collector in a process that group-commits a large import (``GC_ENV`` set
    to ``freeze``: the import configuration, ``infra.demo.demo_env``).

    Such a process keeps a heap that grows with what it has imported (the import configuration's
    aggregate cache holds the recipients, their receipts and claims; the batch source holds its
    own plan or file), while each group makes many objects that outlive a few young collections
    (what its commands hold until the commit) and then die. The collector counts those as
    long-lived, and each time they reach a quarter of the long-lived heap it walks the whole
    heap: a constant number of full collections per event, each costing the heap's size, so the
    collector's share grows with the import (measured on the district plan's first 2,000
    recipients, issue 16: ~8 % of the CPU at 10,000 events, ~22 % at 190,000, one full
    collection every ~10,000 events; ~5 % throughout once frozen).

    After each commit, what is alive then is frozen (``gc.freeze``): the collector's passes
    walk only what was allocated since. Reference counting still frees a frozen object the
    moment it is dropped; only reference cycles among frozen objects wait: everything is
    unfrozen and collected once the events committed through groups in this process have grown
    by :attr:`GROWTH` since the last such collection, so each object is walked a bounded number
    of times and uncollected cycles stay a fraction of the heap."""

    #: the first full collection after this many committed events
    FIRST = 100_000
    #: then each time the committed events have grown by this factor: all the full collections
    #: together walk at most 4/3 of the heap the last one walked (the district year: two, at
    #: 100,000 and 400,000 events). Those measured found no cycles among frozen objects to free.
    GROWTH = 4.0

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.events = 0
        self.next_full = self.FIRST
        #: full collections run, and the objects they found unreachable (cycles)
        self.full, self.unreachable = 0, 0

    def committed(self, events: int) -> None:
        with self.lock:
            self.events += events
            if self.events >= self.next_full:
                gc.unfreeze()
                self.unreachable += gc.collect()
                self.full += 1
                self.next_full = int(self.events * self.GROWTH)
            gc.freeze()


COLLECTOR = _Collector()


def _collector_mode(app: Any) -> str | None:
    env = getattr(app, "env", None)
    return env.get(GC_ENV) if env is not None else None


def _policy_types() -> tuple[type, ...]:
    from ledger.aggregates import PolicyLedger

    return (PolicyLedger,)


def _evict(app: Any, key: Any) -> None:
    """Forget what this process keeps of aggregate ``key`` beside the store: its cached copy, and
    what the engine's last pass over it (``LedgerCore._memos``) says of the recorded decisions: a
    rolled-back command may have left it describing events that were never saved. The pass itself
    is kept, with no standing: a later pass still resumes from it where its inputs are the same
    (the engine compares them), but compares every ``due`` (``LedgerCore._pass``), and no decision
    is appended to it (``LedgerCore._memo``)."""
    cache = getattr(app.repository, "cache", None)
    if cache:
        try:
            cache.get(key, evict=True)
        except KeyError:
            pass
    unsettle_pass(app, key)


def unsettle_pass(app: Any, key: Any) -> None:
    """The engine's last pass over aggregate ``key`` kept as a pass only, with no standing (see
    :func:`_evict`)."""
    memos = getattr(app, "_memos", None)
    if memos is not None:
        with app._memos_lock:  # noqa: SLF001
            kept = memos.get(key)
            if kept is not None:
                memos[key] = (None, kept[1])


class _suspended:
    """Run ``app``'s own path (one command, one transaction) while a group is open."""

    def __init__(self, app: Any):
        self.app = app

    def __enter__(self) -> None:
        self.group = getattr(self.app._unit, "group", None)  # noqa: SLF001
        self.app._unit.group = None  # noqa: SLF001

    def __exit__(self, *exc: Any) -> None:
        self.app._unit.group = self.group  # noqa: SLF001


class _own_reads:
    """The group's save checks no read of a command around the group (``LedgerCore.save``,
    ADR 0021): the group's commands read through its identity map, fast-forwarded or from the
    import's cache, and each of them checked what it needs itself. Once the group has saved, a
    command around it is part-recorded and reads fresh from then on (``LedgerCore._read_set``)."""

    def __init__(self, app: Any):
        self.app = app

    def __enter__(self) -> None:
        from commands.core import _Reads

        self.stack = getattr(self.app._unit, "reads", None)  # noqa: SLF001
        if self.stack is not None:
            self.stack.append(_Reads())

    def __exit__(self, *exc: Any) -> None:
        if self.stack is not None:
            self.stack.pop()


_install_lock = threading.Lock()


def install(app: Any) -> None:
    """Route ``app.repository.get`` through the group of the calling thread, if it has one (once)."""
    with _install_lock:
        repo = app.repository
        if getattr(repo, "_group_aware", False):
            return
        original = repo.get

        def get(aggregate_id: Any, *, version: int | None = None, **kwargs: Any) -> Any:
            group = getattr(app._unit, "group", None)  # noqa: SLF001
            if group is None or version is not None:
                return original(aggregate_id, version=version, **kwargs)
            return group.get(original, aggregate_id, kwargs)

        repo.get = get
        repo._group_aware = True


class open_group:
    """``with app.group(size) as g:`` — commands run by ``app.run`` on this thread join ``g``; it
    commits every ``size`` top-level commands and at the end (not after an exception escaping the
    block: what it held then is dropped). A group opened inside another joins the outer one."""

    def __init__(self, app: Any, size: int = DEFAULT_SIZE):
        self.app, self.size = app, size
        self.outer: Group | None = None
        self.group: Group | None = None

    def __enter__(self) -> Group:
        install(self.app)
        self.outer = getattr(self.app._unit, "group", None)  # noqa: SLF001
        if self.outer is not None:
            return self.outer
        self.group = Group(self.app, size=self.size)
        self.app._unit.group = self.group  # noqa: SLF001
        return self.group

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if self.group is None:
            return
        try:
            if exc_type is None:
                self.group.commit()
            else:
                for key in self.group.held:
                    _evict(self.app, key)
                self.app._take_companions()  # noqa: SLF001
                self.app.forget_policy()
        finally:
            self.group.closed = True
            self.app._unit.group = None  # noqa: SLF001


def run_many(app: Any, cmds: Iterable[m.Command], size: int = DEFAULT_SIZE) -> list[Any]:
    """Run ``cmds`` in groups of ``size`` per transaction; returns, in order, each command's final
    ``Result`` or the exception it raised (the others are kept either way). Inside a group that
    is already open (a handler run by a group), the commands join it and the results are those
    of the outer group's commands, final when it commits."""
    cmds = list(cmds)
    opened = open_group(app, size)
    g = opened.__enter__()
    joined = opened.group is None
    provisional: list[Any] = []
    try:
        for cmd in cmds:
            try:
                provisional.append(g.run(cmd))
            except Exception as exc:  # noqa: BLE001 - the others go on; returned in its place
                provisional.append(exc)
    except BaseException:
        opened.__exit__(*__import__("sys").exc_info())
        raise
    opened.__exit__(None, None, None)
    return provisional if joined else list(g.outcomes)
