"""The controller's etcd records, decoded with their shape checked (issue 11 §5).

Anything may be written under the key prefix (an operator's etcdctl, a bug, a restored
backup): a value that is not JSON, or not the shape this version writes, must cost one
record, not the reconciler's loop nor `get sfc` for every other record. Every read of a
record goes through `decode()`, which raises MalformedRecord saying what is wrong; callers
skip the record and report it (the SFC's status, the log once per key revision).
"""
from __future__ import annotations

import json
import logging
import re

from google.protobuf import json_format

from serpens.proto.serpens.v1 import serpens_pb2 as pb

log = logging.getLogger(__name__)

SFC_NAME = re.compile(r"^[a-z0-9]([a-z0-9-]{0,22}[a-z0-9])?$")
NF_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,21}$")


class MalformedRecord(ValueError):
    """A stored value this controller cannot use; str() says why."""


_NUMBER = (int, float)
# kind -> field -> type(s) the record must have there (records may carry more fields)
_SHAPES = {
    "sfc": {"name": str, "spec": str, "doc": dict, "nfs": list, "generation": int,
            "scale": dict, "created": _NUMBER, "updated": _NUMBER},
    "nf": {"name": str, "description": str, "source": str, "source_sha256": str,
           "image_size": int, "created": _NUMBER, "updated": _NUMBER},
    "node": {},
}
_SCALE = {"replicas": int, "min": int, "max": int}


def decode(value: bytes, kind: str, name: str | None = None) -> dict:
    """The record of `kind` ("sfc", "nf", "node", "status") stored as `value` under `name`;
    MalformedRecord if it is not JSON or not that shape."""
    try:
        record = json.loads(value)
    except (ValueError, RecursionError) as e:
        raise MalformedRecord(f"not JSON ({type(e).__name__}: {str(e)[:80]})") from None
    if not isinstance(record, dict):
        raise MalformedRecord(f"a JSON {type(record).__name__}, not an object")
    if kind == "status":
        status_message(record)  # raises MalformedRecord
        return record
    _fields(record, _SHAPES[kind], "")
    if kind == "sfc":
        _fields(record["scale"], _SCALE, "scale.")
        if not all(isinstance(n, str) for n in record["nfs"]):
            raise MalformedRecord("nfs: not a list of NF names")
    if name is not None and kind in ("sfc", "nf") and record["name"] != name:
        raise MalformedRecord(f"name: {record['name']!r} under the key of {name!r}")
    return record


def status_message(record: dict) -> pb.SFCStatus:
    """The reconciler's status record as the API's message (fields it does not know, e.g.
    of a newer controller, are ignored)."""
    try:
        return json_format.ParseDict(record, pb.SFCStatus(), ignore_unknown_fields=True)
    except json_format.ParseError as e:
        raise MalformedRecord(f"status: {e}") from None


def _fields(record: dict, shape: dict, where: str) -> None:
    for field, types in shape.items():
        value = record.get(field)
        if not isinstance(value, types) or (types is int and isinstance(value, bool)):
            raise MalformedRecord(f"{where}{field}: missing or not a "
                                  f"{getattr(types, '__name__', 'number')}")


class Reported:
    """Logs each malformed key once per revision (a pass every few seconds would repeat it)."""

    def __init__(self):
        self._seen: dict[str, int] = {}

    def __call__(self, key: str, revision: int, error: MalformedRecord) -> None:
        if self._seen.get(key) != revision:
            self._seen[key] = revision
            log.warning("skipping malformed record %s (revision %d): %s", key, revision, error)

    def forget_except(self, keys) -> None:
        self._seen = {k: r for k, r in self._seen.items() if k in keys}
