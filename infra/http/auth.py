"""Bearer tokens and roles (ADR 0013).

A token is ``<payload>.<signature>``: the payload is the base64url of a compact JSON object
``{"officer", "role", "street", "exp"}``, the signature the base64url of HMAC-SHA256 over the
payload's base64url text with ``Settings.token_secret``. Nothing else is trusted: the officer id
a command signs with (handler, reviewer, approver, clearing officer) comes from here, never from
a request body, so separation of duties (R-PH-4 [002 3.4], R-CLR-3) is decided by the domain on
authenticated ids.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import re
import time
from dataclasses import dataclass
from enum import Enum

from ledger.values import street_name

MAX_TOKEN_CHARS = 2048
_OFFICER = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@-]{0,63}$")
_STREET_MAX = 200


class Role(str, Enum):
    STREET_HANDLER = "street_handler"  # 街镇经办人: lodges claims at the recipient's own street (R-PH-1 [002 4.1])
    REVIEWER = "reviewer"  # 审核人 (R-PH-4 [002 3.4])
    APPROVER = "approver"  # 审批人 (R-PH-4 [002 3.4])
    DISTRICT_OFFICER = "district_officer"  # suspension lifts, deadline overrides, social help, parameters
    CLEARING_OFFICER = "clearing_officer"  # repayments, write-off proposals (R-CLR-3)
    AUDITOR = "auditor"  # reads everything, writes nothing
    REGULATOR = "regulator"  # point-in-time snapshots only (R-TIME-3)
    SYSTEM = "system"  # the settlement push and the 免申即享 batch (R-PH-3)


class TokenError(Exception):
    """The token cannot be trusted (malformed, bad signature, expired, bad claims)."""


@dataclass(frozen=True)
class Principal:
    officer: str
    role: Role
    street: str | None
    exp: int

    def claims(self) -> dict[str, object]:
        return {"officer": self.officer, "role": self.role.value, "street": self.street, "exp": self.exp}


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    if not re.fullmatch(r"[A-Za-z0-9_-]*", text):
        raise TokenError("token is not base64url")
    try:
        return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError):
        raise TokenError("token is not base64url") from None


def _sign(secret: str, payload_b64: str) -> str:
    return _b64(hmac.new(secret.encode("utf-8"), payload_b64.encode("ascii"), hashlib.sha256).digest())


def _principal(officer: object, role: object, street: object, exp: object) -> Principal:
    if not isinstance(officer, str) or not _OFFICER.match(officer):
        raise TokenError("officer: 1-64 characters of letters, digits and . _ @ -, starting with a letter or digit")
    try:
        role_v = Role(role)
    except ValueError:
        raise TokenError(f"role: unknown role {role!r}") from None
    if street is not None and (not isinstance(street, str) or not street.strip() or len(street) > _STREET_MAX):
        raise TokenError("street: a non-empty name of at most 200 characters")
    if street is not None:
        street = street_name(street)  # as enrolments keep it: NFKC, trimmed (R-PH-1 [002 4.1])
    if role_v is Role.STREET_HANDLER and street is None:
        raise TokenError("street: a street handler's token names their street (R-PH-1 [002 4.1])")
    if not isinstance(exp, int) or isinstance(exp, bool):
        raise TokenError("exp: expiry in seconds since the epoch")
    return Principal(officer, role_v, street, exp)


def issue(secret: str, officer: str, role: Role | str, street: str | None = None, *, days: float = 30, now: float | None = None) -> str:
    """A signed token for ``officer`` in ``role`` valid for ``days``."""
    if not secret:
        raise TokenError("no token secret configured")
    if days <= 0:
        raise TokenError("days: must be positive")
    exp = int((now if now is not None else time.time()) + days * 86400)
    p = _principal(officer, role.value if isinstance(role, Role) else role, street, exp)
    payload = _b64(json.dumps(p.claims(), separators=(",", ":"), ensure_ascii=False, sort_keys=True).encode("utf-8"))
    return f"{payload}.{_sign(secret, payload)}"


#: Tokens whose signature and claims were found good, by (secret, token): a request is checked
#: at the door, by the request log and by the endpoint, and an officer sends the same token all
#: day. Only the expiry is checked again. Emptied when full.
_verified: dict[tuple[str, str], Principal] = {}
_VERIFIED_MAX = 1024


def verify(secret: str, token: str, *, now: float | None = None) -> Principal:
    """The principal a token names, or :class:`TokenError`."""
    if not secret:
        raise TokenError("no token secret configured")
    p = _verified.get((secret, token))
    if p is None:
        p = _signed(secret, token)
        if len(_verified) >= _VERIFIED_MAX:
            _verified.clear()
        _verified[(secret, token)] = p
    if p.exp <= (now if now is not None else time.time()):
        raise TokenError("token expired")
    return p


def _signed(secret: str, token: str) -> Principal:
    """The principal a well-formed token with a good signature names (its expiry unchecked)."""
    # A token is base64url text: any other character (a header byte above 0x7f arrives as one)
    # is refused here, as a malformed token, before anything compares or encodes it.
    if len(token) > MAX_TOKEN_CHARS or not token.isascii() or token.count(".") != 1:
        raise TokenError("malformed token")
    payload_b64, sig = token.split(".")
    if not hmac.compare_digest(_sign(secret, payload_b64), sig):
        raise TokenError("bad signature")
    try:
        claims = json.loads(_unb64(payload_b64).decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise TokenError("malformed token payload") from None
    if not isinstance(claims, dict) or set(claims) != {"officer", "role", "street", "exp"}:
        raise TokenError("token payload must hold exactly officer, role, street, exp")
    return _principal(claims["officer"], claims["role"], claims["street"], claims["exp"])
