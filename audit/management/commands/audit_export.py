"""Export audit events as JSONL or CSV, streamed (every field, hashes included)."""

from datetime import UTC

from django.core.management.base import BaseCommand, CommandError
from django.utils.dateparse import parse_datetime

from audit.export import FORMATS, events_between, write_events


def _moment(value: str | None, option: str):
    if value is None:
        return None
    try:
        moment = parse_datetime(value)
    except ValueError:
        moment = None
    if moment is None:
        raise CommandError(f"{option} {value!r} is not an ISO-8601 date or time (e.g. 2026-01-31T00:00:00Z).")
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


class Command(BaseCommand):
    help = "Export audit events (since <= occurred_at < until) as JSONL or CSV to a file or stdout."

    def add_arguments(self, parser):
        parser.add_argument("--since", help="ISO-8601 start, inclusive (UTC if no offset is given).")
        parser.add_argument("--until", help="ISO-8601 end, exclusive (UTC if no offset is given).")
        parser.add_argument("--project", type=int, help="Only events of this project id.")
        parser.add_argument("--format", choices=FORMATS, default="jsonl")
        parser.add_argument("--output", help="File to write (default: stdout).")

    def handle(self, *args, since=None, until=None, project=None, format="jsonl", output=None, **options):
        qs = events_between(_moment(since, "--since"), _moment(until, "--until"), project)
        if output in (None, "-"):
            count = write_events(qs, self.stdout, format)
        else:
            with open(output, "w", newline="", encoding="utf-8") as out:
                count = write_events(qs, out, format)
            self.stderr.write(f"Exported {count} events to {output}.")
