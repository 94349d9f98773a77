"""Helpers for the HTTP tests: a client on a fresh store, tokens per role, a recipient ready to claim."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import date, timedelta
from typing import Any

from fastapi.testclient import TestClient
from stdnum.cn import ric

from infra.http import create_app
from infra.http.auth import issue
from infra.settings import Settings

STREET = "华阳路街道"
OTHER_STREET = "天山路街道"
CHC = {"kind": "community_health_centre", "level": 1, "district_designated": True}


def id_number(n: int) -> str:
    """A valid 18-character resident id (GB 11643 check digit), distinct for each n."""
    body = f"31010519580312{n % 1000:03d}"
    return body + ric.calc_check_digit(body + "0")


@dataclass
class Api:
    client: TestClient
    settings: Settings

    def auth(self, officer: str, role: str, street: str | None = None, **extra: str) -> dict[str, str]:
        return {"Authorization": "Bearer " + issue(self.settings.token_secret, officer, role, street), **extra}

    def post(self, path: str, who: dict[str, str], json: Any = None, key: str | None = None):
        headers = dict(who)
        if key:
            headers["Idempotency-Key"] = key
        return self.client.post(path, json=json, headers=headers)

    def get(self, path: str, who: dict[str, str], **params: Any):
        return self.client.get(path, headers=who, params=params or None)

    # -- the usual first steps, each as its role would do it ----------------------------------
    def recipient(self, n: int, street: str = STREET, category: str = "dibao") -> str:
        district = self.auth("district-1", "district_officer")
        r = self.post("/recipients", district, {"id_number": id_number(n), "name": f"person {n}", "street": street})
        assert r.status_code == 201, r.text
        rid = r.json()["ids"]["recipient"]
        assert self.post(f"/recipients/{rid}/categories", district, {"category": category, "from": "2020-01-01"}).status_code == 200
        assert self.post(f"/recipients/{rid}/insurance", district, {"scheme": "resident", "from": "2019-01-01"}).status_code == 200
        return rid

    def expense(self, rid: str, invoice_no: str, *, in_scope: str = "120.00", insurance: str = "30.00", days_ago: int = 10,
                facility: dict | None = None) -> str:
        day = (date.today() - timedelta(days=days_ago)).isoformat()
        body = {
            "visit_type": "outpatient", "facility": {**(facility or CHC), "code": "CHC-HY-1"},
            "service_date": day, "invoice_date": day, "invoice_no": invoice_no,
            "total": in_scope, "in_scope": in_scope, "basic_insurance_paid": insurance,
        }
        r = self.post(f"/recipients/{rid}/expenses", self.auth("push", "system"), body)
        assert r.status_code == 201, r.text
        return r.json()["ids"]["expense"]


@contextmanager
def api_on(database_url: str) -> Iterator[Api]:
    settings = Settings(database_url=database_url, token_secret="test-secret-for-http")
    with TestClient(create_app(settings)) as client:
        yield Api(client, settings)
