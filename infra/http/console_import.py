"""The console's settlement-file upload (docs/import.md): a form that sends the file to the API's
``POST /imports`` in process, with the officer's own token (same roles, same street isolation),
and shows the report: each bad row with its line, column, field and rule, what was recorded,
flagged as duplicate or refused, and the rejects file to fix and upload again."""

from __future__ import annotations

import hmac
from typing import Any

import httpx
from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, Response
from starlette.datastructures import UploadFile

from infra import importer
from infra.http.console import BASE, Refused, _need, _secure, _session, page


def routes(app: FastAPI) -> None:
    @app.get(f"{BASE}/import", include_in_schema=False, response_class=HTMLResponse)
    def import_form(request: Request) -> Response:
        s = _session(request)
        _need(s, "import")
        return page(request, s, "import.html", report=None, columns=importer.COLUMNS, title="导入结算记录 Import settlements")

    @app.get(f"{BASE}/import/template", include_in_schema=False)
    def import_template(request: Request, format: str = "xlsx", lang: str = "zh") -> Response:
        s = _session(request)
        _need(s, "import")
        if format not in ("csv", "xlsx") or lang not in ("zh", "en"):
            raise Refused(422, "INVALID_INPUT", "format: csv or xlsx; lang: zh or en", field="format")
        body = importer.template(format, lang)
        return _secure(Response(body, media_type=importer.media_type(format),
                                headers={"Content-Disposition": f'attachment; filename="settlements-template.{format}"'}))

    @app.post(f"{BASE}/import", include_in_schema=False, response_class=HTMLResponse)
    async def import_upload(request: Request) -> Response:
        s = _session(request)
        _need(s, "import")
        form = await request.form()
        if not hmac.compare_digest(str(form.get("csrf", "")), s.csrf):
            raise Refused(403, "CSRF", "the form is not from this session: reload the page and try again")
        upload = form.get("file")
        if not isinstance(upload, UploadFile) or not upload.filename:
            raise Refused(422, "INVALID_INPUT", "file: choose a .csv or .xlsx file to import", field="file")
        data = await upload.read()
        skip = str(form.get("skip_invalid", "")) in ("1", "true", "on")
        transport = httpx.ASGITransport(app=request.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://console.internal", timeout=None) as client:
            resp = await client.post("/imports", files={"file": (upload.filename, data)}, data={"skip_invalid": "true" if skip else "false"},
                                     headers={"Authorization": f"Bearer {s.token}"})
        body: Any = resp.json() if resp.headers.get("content-type", "").startswith("application/json") else resp.text
        if resp.status_code not in (200, 422) or not isinstance(body, dict) or "summary" not in body:
            raise Refused.from_problem(resp.status_code, body)
        if resp.status_code == 422:
            body["status"] = "invalid"  # the API's error body: nothing was recorded
        return page(request, s, "import.html", status=resp.status_code, report=body, skipped=skip, columns=importer.COLUMNS,
                    title="导入结算记录 Import settlements")
