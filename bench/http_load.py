"""A mixed HTTP load on ``ledger serve`` (issue 16: a service that serves a district at once).

    .venv/bin/python bench/http_load.py                                  # temporary SQLite store, 1 worker
    .venv/bin/python bench/http_load.py --workers 2 --clients 50 --duration 60 \\
        --database-url postgresql://postgres@127.0.0.1:5432/bench
    .venv/bin/python bench/http_load.py --demo 300 …                     # a demo district first

Starts ``ledger serve --workers N`` on loopback (127.0.0.1 only, a free port), enrols ``--people``
recipients through the API (not timed), then runs ``--clients`` concurrent clients (aiohttp, one connection each)
for a fixed ``--duration``: 70% reads (``GET /clearing/cases``, a recipient's statement and caps,
the duplicate index, projection status; ``--snapshots`` adds ``GET /snapshots``) and 30% claim
flows (expense → claim → review → approve → pay, and now and then a late insurance payment that
opens a clearing case), each request one operation. Prints requests/s, p50/p99 latency of reads and
of writes, errors (5xx, timeouts, transport errors), the CPU time the server processes and the
load generator spent per request (a figure that a busy machine disturbs less than latency), and the
RSS of every server process at the end.
Bounded: at most 500 clients, 600 s, a 60 s client timeout. A measurement, not a test.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import json
import os
import random
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from datetime import date, timedelta
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

STREET = "华阳路街道"
CHC = {"kind": "community_health_centre", "level": 1, "district_designated": True, "code": "CHC-HY-1"}
SECRET = "bench-http-load-token-secret-0123456789"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _id_number(n: int) -> str:
    from stdnum.cn import ric

    body = f"310105{1950 + n // 1000 % 40}0312{n % 1000:03d}"  # 17 characters, distinct for n < 40,000
    return body + ric.calc_check_digit(body + "0")


def _rss_kb(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_text()
    except OSError:
        return ""


def _what(pid: int) -> str:
    try:
        args = Path(f"/proc/{pid}/cmdline").read_text().split("\0")
    except OSError:
        return "?"
    text = " ".join(a for a in args if a)
    return "(worker)" if "multiprocessing" in text and "spawn_main" in text else "(serve)" if "serve" in text else f"({text[:30]})"


def _cpu_s(pid: int) -> float:
    """User and system CPU seconds of one process so far (0 when it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _tree(pid: int) -> list[int]:
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        try:
            for task in Path(f"/proc/{p}/task").iterdir():
                kids = (task / "children").read_text().split()
                todo += [int(k) for k in kids]
        except OSError:
            pass
    return out


class Stats:
    def __init__(self) -> None:
        self.reads: list[float] = []
        self.writes: list[float] = []
        self.errors: dict[str, int] = {}
        self.refused = 0  # 4xx: a rule's answer, counted apart from errors
        self.by_route: dict[str, list[float]] = {}
        self.read_at: list[tuple[float, float]] = []  # (when it began, how long it took)

    def error(self, what: str) -> None:
        self.errors[what] = self.errors.get(what, 0) + 1


def _pct(values: list[float], q: float) -> float:
    if not values:
        return 0.0
    s = sorted(values)
    return s[min(len(s) - 1, int(q * len(s)))]


class _Answer:
    """What a client keeps of an answer: its status and, for a write's 2xx, its JSON body."""

    __slots__ = ("status_code", "body")

    def __init__(self, status_code: int, body: bytes) -> None:
        self.status_code, self.body = status_code, body

    def json(self) -> Any:
        return json.loads(self.body)


async def _call(client: Any, stats: Stats, kind: str, method: str, path: str, headers: dict, **kw: Any) -> _Answer | None:
    import aiohttp

    began = time.perf_counter()
    try:
        async with client.request(method, path, headers=headers, **kw) as r:
            body = await r.read()
            status = r.status
    except asyncio.TimeoutError:
        stats.error(f"timeout {method} {path.split('/')[1]}")
        return None
    except aiohttp.ClientError as exc:
        stats.error(f"{type(exc).__name__} {method} {path.split('/')[1]}")
        return None
    took = time.perf_counter() - began
    (stats.reads if kind == "read" else stats.writes).append(took)
    if kind == "read":
        stats.read_at.append((began, took))
    route = "/".join(p if not any(c.isdigit() for c in p) else "{id}" for p in path.split("/"))
    stats.by_route.setdefault(f"{method} {route}", []).append(took)
    if status >= 500:
        stats.error(f"{status} {method} {path.split('/')[1]}")
    elif status >= 400:
        stats.refused += 1
    return _Answer(status, body)


async def _client(n: int, client: Any, tokens: dict[str, dict], people: list[str], deadline: float, stats: Stats, snapshots: bool) -> None:
    rnd = random.Random(n)
    k = 0
    while time.perf_counter() < deadline:
        k += 1
        rid = rnd.choice(people)
        # 70% of requests are reads: a claim flow (five or six writes) starts only while the
        # writes are under 30% of what was sent so far
        if len(stats.writes) >= 0.3 * (len(stats.reads) + len(stats.writes)):
            choice = rnd.random()
            if choice < 0.35:
                await _call(client, stats, "read", "GET", "/clearing/cases", tokens["auditor"])
            elif choice < 0.6:
                await _call(client, stats, "read", "GET", f"/recipients/{rid}", tokens["auditor"])
            elif choice < 0.8:
                await _call(client, stats, "read", "GET", f"/recipients/{rid}/caps", tokens["reviewer"])
            elif choice < 0.9 or not snapshots:
                await _call(client, stats, "read", "GET", "/duplicates", tokens["district"])
            else:
                await _call(client, stats, "read", "GET", "/snapshots", tokens["regulator"],
                            params={"valid_on": date.today().isoformat(), "format": "json"})
            continue
        day = (date.today() - timedelta(days=rnd.randint(2, 40))).isoformat()
        body = {"visit_type": "outpatient", "facility": CHC, "service_date": day, "invoice_date": day,
                "invoice_no": f"L{n}-{k}-{rnd.randint(0, 10**9)}", "total": "150.00", "in_scope": "150.00", "basic_insurance_paid": "30.00"}
        r = await _call(client, stats, "write", "POST", f"/recipients/{rid}/expenses", tokens["system"], json=body)
        if r is None or r.status_code != 201:
            continue
        eid = r.json()["ids"]["expense"]
        r = await _call(client, stats, "write", "POST", f"/recipients/{rid}/claims", tokens["handler"], json={"expenses": [eid]})
        if r is None or r.status_code not in (200, 201):
            continue
        claim = r.json()["ids"]["claim"]
        for path, who in ((f"/claims/{claim}/review", "reviewer"), (f"/claims/{claim}/approve", "approver"), (f"/claims/{claim}/pay", "district")):
            r = await _call(client, stats, "write", "POST", path, tokens[who])
            if r is None or r.status_code != 200:
                break
        else:
            if rnd.random() < 0.2:  # a late insurance payment: a clearing case (R-CLR-1(a))
                await _call(client, stats, "write", "POST", f"/expenses/{eid}/insurance-settlements", tokens["system"],
                            json={"scheme": "burden_reduction", "amount": "5.00"})


def _headers(token: str) -> dict[str, str]:
    return {"Authorization": "Bearer " + token}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--database-url", help="the store (default: a temporary SQLite file)")
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--clients", type=int, default=20)
    ap.add_argument("--duration", type=float, default=30.0, help="seconds of load")
    ap.add_argument("--people", type=int, default=40, help="recipients enrolled through the API before the load")
    ap.add_argument("--demo", type=int, default=0, help="generate a demo district of this many people first")
    ap.add_argument("--snapshots", action="store_true", help="include GET /snapshots among the reads")
    ap.add_argument("--no-read-models", action="store_true", help="do not build the duplicates and clearing_cases views before the load")
    args = ap.parse_args(argv)
    clients, duration = max(1, min(args.clients, 500)), max(1.0, min(args.duration, 600.0))

    import httpx

    from infra.http.auth import issue

    tmp = None
    url = args.database_url
    if url is None:
        tmp = tempfile.TemporaryDirectory(prefix="bench-http-")
        url = f"sqlite:///{tmp.name}/ledger.db"
    env = {k: v for k, v in os.environ.items() if not k.startswith("LEDGER_")}
    env.update(LEDGER_DATABASE_URL=url, LEDGER_TOKEN_SECRET=SECRET)
    if args.demo:
        from bench.dataset import generate
        from infra.settings import Settings

        app, how = generate(Settings(database_url=url), args.demo, 2026)
        app.close()
        print(f"dataset: {how}")
    port = _free_port()
    ledger = shutil.which("ledger", path=str(Path(sys.executable).parent)) or "ledger"
    server = subprocess.Popen([ledger, "serve", "--host", "127.0.0.1", "--port", str(port), "--workers", str(args.workers)],
                              env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    base = f"http://127.0.0.1:{port}"
    try:
        for _ in range(600):
            try:
                if httpx.get(base + "/health", timeout=1.0).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if server.poll() is not None:
                print(server.stderr.read() if server.stderr else "", file=sys.stderr)
                return 2
            time.sleep(0.1)
        tokens = {name: _headers(issue(SECRET, officer, role, street, days=1)) for name, officer, role, street in (
            ("system", "push", "system", None), ("handler", "h-1", "street_handler", STREET), ("reviewer", "r-1", "reviewer", None),
            ("approver", "a-1", "approver", None), ("district", "d-1", "district_officer", None), ("auditor", "aud-1", "auditor", None),
            ("regulator", "g-1", "regulator", None))}
        people: list[str] = []
        with httpx.Client(base_url=base, timeout=60.0) as c:
            for n in range(args.people):
                r = c.post("/recipients", headers=tokens["district"], json={"id_number": _id_number(n), "name": f"load {n}", "street": STREET})
                if r.status_code not in (200, 201):
                    continue
                rid = r.json()["ids"]["recipient"]
                c.post(f"/recipients/{rid}/categories", headers=tokens["district"], json={"category": "dibao", "from": "2020-01-01"})
                c.post(f"/recipients/{rid}/insurance", headers=tokens["district"], json={"scheme": "resident", "from": "2019-01-01"})
                people.append(rid)
        if not people:
            print("no recipient could be enrolled", file=sys.stderr)
            return 2
        if not args.no_read_models:  # as deployed: the read models built ahead (`ledger projections rebuild`)
            built = subprocess.run([ledger, "projections", "rebuild", "duplicates", "clearing_cases", "cuts"], env=env,
                                   capture_output=True, text=True, timeout=600)
            if built.returncode != 0:
                print(built.stderr[-2000:], file=sys.stderr)
                return 2
        stats = Stats()
        serving = _tree(server.pid)
        timed: dict[str, float] = {}

        async def run() -> None:
            import aiohttp

            # One connection per client, as one officer's browser; every client (its session and
            # connector) is made before the clock starts: a client made while others wait for
            # answers holds up the loop that reads them, which would count as the server's latency.
            # aiohttp rather than httpx here: on this two-core machine the load generator shares
            # the cores with the server, and httpx took ~1.5 ms of CPU a request, a fifth of the
            # machine at this load (docs/performance-log.md, twelfth pass); the setup above stays on httpx.
            async with contextlib.AsyncExitStack() as stack:
                made = [await stack.enter_async_context(aiohttp.ClientSession(
                    base_url=base, timeout=aiohttp.ClientTimeout(total=60.0),
                    connector=aiohttp.TCPConnector(limit=1, force_close=False))) for _ in range(clients)]
                # This process's own heap (imports, clients) frozen: its collector's full passes,
                # each a pause of every client's reading, walk only what the load itself makes.
                gc.collect()
                gc.freeze()
                timed["server_cpu"], timed["own_cpu"] = sum(_cpu_s(p) for p in serving), time.process_time()
                timed["began"] = time.perf_counter()
                deadline = timed["began"] + duration
                await asyncio.gather(*(_client(i, made[i], tokens, people, deadline, stats, args.snapshots) for i in range(clients)))

        asyncio.run(run())
        began, server_cpu, own_cpu = timed["began"], timed["server_cpu"], timed["own_cpu"]
        elapsed = time.perf_counter() - began
        total = len(stats.reads) + len(stats.writes)
        rss = {pid: _rss_kb(pid) for pid in _tree(server.pid)}
        server_cpu = sum(_cpu_s(p) for p in serving) - server_cpu
        own_cpu = time.process_time() - own_cpu
        print(f"store: {url.split('@')[-1]}  workers {args.workers}  clients {clients}  {elapsed:.1f}s  people {len(people)}")
        print(f"requests/s      : {total / elapsed:,.1f}  ({total} requests: {len(stats.reads)} reads, {len(stats.writes)} writes, {stats.refused} refused 4xx)")
        print(f"read  latency   : p50 {_pct(stats.reads, 0.5) * 1000:,.0f} ms  p99 {_pct(stats.reads, 0.99) * 1000:,.0f} ms")
        print(f"write latency   : p50 {_pct(stats.writes, 0.5) * 1000:,.0f} ms  p99 {_pct(stats.writes, 0.99) * 1000:,.0f} ms")
        print(f"errors          : {sum(stats.errors.values())} {stats.errors if stats.errors else ''}")
        print(f"CPU per request : server {server_cpu / max(total, 1) * 1000:,.2f} ms  load generator {own_cpu / max(total, 1) * 1000:,.2f} ms")
        windows: dict[int, list[float]] = {}
        for at, took in stats.read_at:
            windows.setdefault(int((at - began) // 10), []).append(took)
        print("read p99 by 10 s: " + "  ".join(f"{w * 10}s {_pct(t, 0.99) * 1000:,.0f} ({len(t) / 10:,.0f}/s)" for w, t in sorted(windows.items())))
        for route, took in sorted(stats.by_route.items()):
            print(f"  {route:<42} {len(took):>6}  p50 {_pct(took, 0.5) * 1000:>7,.0f} ms  p99 {_pct(took, 0.99) * 1000:>7,.0f} ms")
        print("RSS per process : " + ", ".join(f"pid {p} {_what(p)} {kb / 1024:,.0f} MB" for p, kb in rss.items() if kb))
    finally:
        workers = {pid: _cmdline(pid) for pid in _tree(server.pid)[1:]}
        server.terminate()
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
            for pid, cmdline in workers.items():  # workers left behind would keep the database open
                if cmdline and _cmdline(pid) == cmdline:
                    try:
                        os.kill(pid, 9)
                    except OSError:
                        pass
        if tmp is not None:
            tmp.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
