"""How long the console's clearing and district pages take on a store (the demo store by default).

    make demo
    .venv/bin/python -m bench.console_pages                    # LEDGER_DATABASE_URL, or ./var/ledger.db
    .venv/bin/python -m bench.console_pages --no-warm-up       # as the first visit after a start without it

The service is built as ``ledger serve`` builds it (the console's figures are brought to the head
in the background at start); the script waits for that warm-up, then times each page twice through
the TestClient: the first visit and a second one. A script, never a timed unit test.
"""

from __future__ import annotations

import argparse
import json
import threading
import time


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--no-warm-up", action="store_true", help="time the first visit without the start-up warm-up")
    parser.add_argument("--pages", nargs="*", default=["/console/clearing", "/console/clearing?show=all", "/console/district"])
    args = parser.parse_args()

    from fastapi.testclient import TestClient

    from infra.http import create_app
    from infra.http.auth import issue
    from infra.http.console import COOKIE
    from infra.settings import get_settings

    settings = get_settings()
    started = time.perf_counter()
    app = create_app(settings)
    built = time.perf_counter() - started
    app.state.warm_console = not args.no_warm_up
    timings: dict[str, list[float]] = {}
    with TestClient(app) as client:
        if not args.no_warm_up:
            warming = [t for t in threading.enumerate() if t.name == "console-warm-up"]
            for t in warming:
                t.join()
        warmed = time.perf_counter() - started
        client.cookies.set(COOKIE, issue(settings.token_secret, "bench-console", "district_officer"))
        for page in args.pages:
            for _ in range(2):
                t0 = time.perf_counter()
                r = client.get(page)
                timings.setdefault(page, []).append(round(time.perf_counter() - t0, 3))
                assert r.status_code == 200, (page, r.status_code)
    print(json.dumps({"store": settings.database_url, "service_built_s": round(built, 2), "ready_after_s": round(warmed, 2),
                      "warm_up": not args.no_warm_up, "pages_s": timings}, indent=2))


if __name__ == "__main__":
    main()
