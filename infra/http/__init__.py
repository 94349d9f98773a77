"""The HTTP service (``ledger serve``): FastAPI over the command handlers and read functions."""

from infra.http.app import PERMISSIONS, create_app, worker_app

__all__ = ["PERMISSIONS", "create_app", "worker_app"]
