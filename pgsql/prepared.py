"""Server-side prepared statements for the hot paths' plain SQL (psycopg2 has none of its own)."""

import functools
import re
import zlib

from django.db import DatabaseError

_PLACEHOLDER = re.compile(r"%s")
_NAMED = re.compile(r"%\((\w+)\)s")


# What PostgreSQL answers when a session's prepared statement no longer matches what this
# process believes: the plan's result type changed (a migration altered a selected column), the
# statement is gone (a pooler ran DISCARD ALL) or exists already (bookkeeping lost).
STALE_PREPARED = {"0A000", "26000", "42P05"}


def execute_prepared(cursor, name: str, sql: str, args: list | dict, before: tuple[str, list | dict] | None = None
                     ) -> None:
    """Run ``sql`` as a server-side prepared statement, preparing it on first use in this database
    session. Placeholders are cast to their type in the text: ``%s::bigint`` with a list of
    arguments, or named, ``%(reader)s::bigint``, with a dict (a name may recur; every occurrence is
    cast). ``before`` takes arguments of the same kind.

    A hot statement with many joins or CTEs costs PostgreSQL more to plan than to run (the claim:
    0.6 ms of planning for 0.7 ms of execution); prepared, it is planned once per session (custom
    plans for its first five runs, then the generic plan if that is no worse). psycopg2 has no
    prepared statements of its own. The statement's name carries a hash of its text, so new code
    never runs an old text. Where connections are not kept (``CONN_MAX_AGE`` 0: ASGI, the demo)
    preparing would only add a round trip, so the statement runs as it is. Should the session's
    statement have gone stale, the error propagates (this request fails) and the connection is
    closed at the end of the request, so the next one prepares afresh. The statements outlive
    rollbacks; behind a pooler in transaction mode, use session pooling.

    ``before``: a statement (text, arguments) sent in the same message, ahead of this one. The
    two run as one transaction (PostgreSQL's implicit transaction block for a multi-statement
    message, or the caller's open one), each with its own snapshot; the last one's rows come back.
    """
    if not cursor.db.settings_dict.get("CONN_MAX_AGE"):
        if before is None:
            cursor.execute(sql, args)
        else:
            cursor.execute(f"{before[0]};\n{sql}", _joined(before[1], args))
        return
    key = (name, sql)
    named = _NAMES.get(key)
    if named is None:
        named = _NAMES[key] = f"{name}_{zlib.crc32(sql.encode()):08x}"
        if len(_NAMES) > 1024:  # texts that vary without bound would be a bug; keep memory bounded anyway
            _NAMES.clear()
    if isinstance(args, dict):
        text, order = _numbered_names(sql)
        execute_args = {name: args[name] for name in order}
        run_prepared(cursor, named, lambda: f"PREPARE {named} AS {text}", [execute_args[n] for n in order], before)
        return
    run_prepared(cursor, named, lambda: f"PREPARE {named} AS {_numbered(sql)}", args, before)


_NAMES: dict[tuple[str, str], str] = {}  # (name, text) -> the prepared statement's name


def run_prepared(cursor, name: str, prepare, args: list, before: tuple[str, list] | None = None) -> None:
    """EXECUTE the statement ``name`` with ``args``, first running ``prepare`` (its PREPARE, or a
    function returning it) if this database session has not; a stale statement (see
    execute_prepared) makes the connection close at the end of the request and the error
    propagate. ``before``: as execute_prepared's."""
    db = cursor.db
    prepared = db.__dict__.setdefault("_rows_prepared", {})
    try:
        if prepared.get(name) is not db.connection:
            cursor.execute(prepare() if callable(prepare) else prepare)
            prepared[name] = db.connection
        if before is None:
            cursor.execute(_execute(name, len(args)), args)
        elif isinstance(before[1], dict):  # its names, then this statement's arguments by position
            numbered = {**before[1], **{f"_{i}": arg for i, arg in enumerate(args)}}
            placeholders = ", ".join(f"%(_{i})s" for i in range(len(args)))
            cursor.execute(f"{before[0]}; EXECUTE {name}" + (f" ({placeholders})" if args else ""), numbered)
        else:
            cursor.execute(f"{before[0]}; {_execute(name, len(args))}", [*before[1], *args])
    except DatabaseError as exc:
        if getattr(exc.__cause__, "pgcode", None) in STALE_PREPARED:
            db.__dict__.pop("_rows_prepared", None)  # the next request prepares on a new session
            db.close_at = 0
        raise


def _execute(name: str, count: int) -> str:
    return f"EXECUTE {name} ({', '.join(['%s'] * count)})" if count else f"EXECUTE {name}"


def _joined(first: list | dict, second: list | dict) -> list | dict:
    if isinstance(first, dict) != isinstance(second, dict):
        raise TypeError("a statement and the one sent before it take arguments of one kind: both lists or both dicts")
    return {**first, **second} if isinstance(first, dict) else [*first, *second]


@functools.lru_cache(maxsize=256)  # the hot statements' texts are a handful of fixed strings
def _numbered_names(sql: str) -> tuple[str, tuple[str, ...]]:
    """``%(name)s::type`` -> ``$n::type``, one number per name in order of first use, and the names
    in that order; refuses an uncast placeholder, a positional one or ``%%``."""
    if "%%" in sql or _PLACEHOLDER.search(sql) or len(_NAMED.findall(sql)) != len(re.findall(r"%\(\w+\)s::", sql)):
        raise ValueError("a prepared statement's text needs a cast on every %(name)s placeholder, no %s and no %%")
    order: list[str] = []

    def number(match) -> str:
        if match.group(1) not in order:
            order.append(match.group(1))
        return f"${order.index(match.group(1)) + 1}"

    return _NAMED.sub(number, sql), tuple(order)


def _numbered(sql: str) -> str:
    """``%s`` -> ``$1``, ``$2``, ...; refuses text a plain substitution would get wrong."""
    if "%%" in sql or sql.count("%s") != sql.count("%s::"):
        raise ValueError("a prepared statement's text needs a cast on every %s placeholder and no %%")
    numbered = iter(range(1, sql.count("%s") + 1))
    return _PLACEHOLDER.sub(lambda _: f"${next(numbered)}", sql)
