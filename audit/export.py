"""Audit events as documents: JSONL and CSV export, and the archives retention writes.

A document holds every field of the event (id, hash and prev_hash included) with the time in the
same ISO-8601 UTC form the hash covers, so ``audit.trail.event_hash`` can be recomputed from an
exported line alone. Exports stream rows (``values()`` + ``iterator``): memory stays flat
whatever the range.
"""

import csv
import json
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import TextIO

from django.db.models import QuerySet

from audit.models import AuditEvent
from audit.trail import HASHED_FIELDS

FIELDS = ("id", *HASHED_FIELDS, "hash")
FORMATS = ("jsonl", "csv")
CHUNK = 2000
# CSV cannot tell an empty string from a null; these columns are never "" in the database.
_NULLABLE_INTS = ("actor_id", "actor_tier", "project_id", "protocol_version")
_INTS = ("id", "shard", "seq")


def format_time(value: datetime) -> str:
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def events_between(since: datetime | None = None, until: datetime | None = None,
                   project_id: int | None = None) -> QuerySet:
    """Events with ``since <= occurred_at < until`` (either open), of one project if given, by id."""
    qs = AuditEvent.objects.all()
    if since is not None:
        qs = qs.filter(occurred_at__gte=since)
    if until is not None:
        qs = qs.filter(occurred_at__lt=until)
    if project_id is not None:
        qs = qs.filter(project_id=project_id)
    return qs.order_by("id")


def documents(qs: QuerySet) -> Iterator[dict]:
    for row in qs.values(*FIELDS).iterator(chunk_size=CHUNK):
        row["occurred_at"] = format_time(row["occurred_at"])
        yield row


def to_json_line(doc: dict) -> str:
    return json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=False) + "\n"


def write_jsonl(qs: QuerySet, out: TextIO) -> int:
    count = 0
    for doc in documents(qs):
        out.write(to_json_line(doc))
        count += 1
    return count


def write_csv(qs: QuerySet, out: TextIO) -> int:
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(FIELDS)
    count = 0
    for doc in documents(qs):
        doc["extra"] = json.dumps(doc["extra"], sort_keys=True, separators=(",", ":"), ensure_ascii=False)
        writer.writerow(["" if doc[f] is None else doc[f] for f in FIELDS])
        count += 1
    return count


def write_events(qs: QuerySet, out: TextIO, fmt: str) -> int:
    """Write the events of ``qs`` to ``out`` as ``jsonl`` or ``csv``; the number written."""
    if fmt == "jsonl":
        return write_jsonl(qs, out)
    if fmt == "csv":
        return write_csv(qs, out)
    raise ValueError(f"Unknown export format {fmt!r}; choose one of {', '.join(FORMATS)}.")


def values_from_document(doc: dict) -> dict:
    """An exported JSONL object back into the values ``event_hash`` takes."""
    values = dict(doc)
    values["occurred_at"] = datetime.fromisoformat(doc["occurred_at"])
    return values


def values_from_csv_row(row: dict) -> dict:
    """A CSV export row (all strings) back into the values ``event_hash`` takes."""
    values = dict(row)
    for name in _INTS:
        values[name] = int(row[name])
    for name in _NULLABLE_INTS:
        values[name] = int(row[name]) if row[name] != "" else None
    values["client_ip"] = row["client_ip"] or None
    values["extra"] = json.loads(row["extra"])
    values["occurred_at"] = datetime.fromisoformat(row["occurred_at"])
    return values
