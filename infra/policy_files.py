"""Read the policy packs shipped with the package (``ledger/policy/packs/<scheme>.yaml``).

The files are package data, read through ``importlib.resources`` so that an installed ledger
finds them too. Parsing and checking stay in the pure ``ledger.policy.packs``.
"""

from __future__ import annotations

import copy
import functools
import re
from datetime import datetime
from importlib import import_module, resources
from pathlib import Path

import yaml

from ledger.policy.packs import JURISDICTIONS, SCHEMES, Pack, parse_pack, validate
from ledger.policy.params import PolicyBook, PolicyError

_SCHEME_NAME = re.compile(r"^[a-z_]+(\.[a-z_]+)+$")


def pack_resource(scheme: str):
    """The packaged file of a scheme's pack (a Traversable)."""
    if scheme not in SCHEMES or not _SCHEME_NAME.match(scheme):
        raise PolicyError(f"unknown scheme {scheme!r} (known: {', '.join(SCHEMES)})", code="UNKNOWN_SCHEME", field="scheme")
    return _packs_dir() / f"{scheme}.yaml"


def _packs_dir():
    try:
        return resources.files("ledger.policy") / "packs"
    except NotADirectoryError:
        # Python 3.11: while ledger.policy is a namespace package, an editable install puts its
        # path hook into __path__ and importlib.resources refuses it; use the real directories.
        for entry in import_module("ledger.policy").__path__:
            if Path(entry, "packs").is_dir():
                return Path(entry, "packs")
        raise


def load_pack_data(scheme: str) -> dict:
    """The raw data of ``ledger/policy/packs/<scheme>.yaml`` (a fresh copy each call)."""
    return copy.deepcopy(_read_pack_data(scheme))


@functools.lru_cache(maxsize=None)
def _read_pack_data(scheme: str) -> dict:
    """Read and parse a pack file once per process: the files ship with the code."""
    resource = pack_resource(scheme)
    try:
        text = resource.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise PolicyError(f"no policy pack file for {scheme!r}", code="UNKNOWN_SCHEME", field="scheme") from None
    try:
        data = yaml.load(text, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    except yaml.YAMLError as exc:
        raise PolicyError(f"policy pack {scheme}.yaml is not valid YAML: {exc}", field=scheme) from None
    if not isinstance(data, dict):
        raise PolicyError(f"policy pack {scheme}.yaml is not a mapping", field=scheme)
    if data.get("scheme") != scheme:
        raise PolicyError(f"policy pack {scheme}.yaml declares scheme {data.get('scheme')!r}", field="scheme")
    return data


def load_packs(jurisdiction: str, published_at: datetime) -> list[Pack]:
    """Parse every pack of a jurisdiction, published at ``published_at``, checked together.

    Nothing is added to any book here: the caller publishes the versions (as events) once this
    returns, so a refused pack changes nothing.
    """
    try:
        schemes = JURISDICTIONS[jurisdiction]
    except KeyError:
        raise PolicyError(
            f"unknown jurisdiction {jurisdiction!r} (known: {', '.join(JURISDICTIONS)})",
            code="UNKNOWN_JURISDICTION",
            field="jurisdiction",
        ) from None
    packs = [parse_pack(load_pack_data(scheme), published_at=published_at) for scheme in schemes]
    validate(PolicyBook(), [v for pack in packs for v in pack.versions])
    return packs
