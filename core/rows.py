"""Model instances from rows of plain SQL, for the few hot paths (claims, submits, token checks)
where building the query with the ORM costs several times what running it does (bench/claims.py).

``columns`` lists a model's every concrete column under a table alias; ``instance`` turns the
matching slice of a row into the instance the ORM would have built (JSON fields decoded):
PostgreSQL's driver returns the Python types the fields hold (timezone-aware datetimes).
"""

import functools
import re
import zlib

from django.db import DEFAULT_DB_ALIAS, DatabaseError, connection
from django.db.models import signals
from django.db.models.base import ModelState

_PLACEHOLDER = re.compile(r"%s")


def columns(model, alias: str) -> list[str]:
    return [f'{alias}."{f.column}"' for f in model._meta.concrete_fields]


def instance(model, values):
    """An instance from every concrete field's value, in ``columns`` order."""
    fields = model._meta.concrete_fields
    values = [f.from_db_value(v, None, connection) if v is not None and hasattr(f, "from_db_value") else v
              for f, v in zip(fields, values, strict=True)]
    return model.from_db(DEFAULT_DB_ALIAS, None, values)  # ``connection`` is always that alias's


def instances(models, row) -> list:
    """One instance per model from a row holding ``columns`` of each, in order."""
    result, start = [], 0
    for model in models:
        width = len(model._meta.concrete_fields)
        result.append(instance(model, row[start:start + width]))
        start += width
    return result


def loaded(model, **values):
    """An instance as if read with only these fields (the others are deferred: touching one loads it).

    What Model.from_db builds, without running Model.__init__ over every field where no pre_init
    or post_init receiver would see it: a deferred field is one missing from the instance's
    __dict__ (Model.get_deferred_fields), which is what is left here."""
    attnames = _attnames(model)
    if not attnames.issuperset(values):
        raise TypeError(f"{model.__name__} has no field {sorted(set(values) - attnames)}")
    if signals.pre_init.has_listeners(model) or signals.post_init.has_listeners(model):
        names = [f.attname for f in model._meta.concrete_fields if f.attname in values]
        return model.from_db(DEFAULT_DB_ALIAS, names, [values[n] for n in names])
    instance = model.__new__(model)
    instance.__dict__.update(values)
    state = instance._state = ModelState()
    state.adding, state.db = False, DEFAULT_DB_ALIAS  # ``connection`` is always that alias's
    return instance


@functools.cache
def _attnames(model) -> frozenset[str]:
    return frozenset(f.attname for f in model._meta.concrete_fields)


def insert(model, **values):
    """``model.objects.create(**values)`` as one plain INSERT ... RETURNING the primary key, on
    PostgreSQL: the ORM's building of an INSERT cost several times its running (bench/claims.py).

    Every concrete field but the primary key must be given (by attribute name: ``task_id``): no
    default is filled in, ``auto_now_add`` included, so nothing is stored that the caller did not
    say. Values go through each field's ``get_db_prep_save``, as the ORM's do. Elsewhere than on
    PostgreSQL, or where a pre_save or post_save receiver listens for the model, the ORM creates it
    (its ``auto_now_add`` then sets its own time).
    """
    fields, expected, sql = _insert_statement(model)
    given = set(values)
    if given != expected:
        raise TypeError(f"{model.__name__}: missing {sorted(expected - given)}, unknown {sorted(given - expected)}")
    if signals.pre_save.has_listeners(model) or signals.post_save.has_listeners(model):
        return model.objects.create(**values)
    with connection.cursor() as cursor:
        cursor.execute(sql, [f.get_db_prep_save(values[f.attname], connection) for f in fields])
        pk = cursor.fetchone()[0]
    return loaded(model, **{model._meta.pk.attname: pk}, **values)


@functools.cache
def _insert_statement(model) -> tuple[list, frozenset[str], str]:
    """(the fields but the primary key, their attribute names, the INSERT text), once per model."""
    fields = [f for f in model._meta.concrete_fields if not f.primary_key]
    names = ", ".join(f'"{f.column}"' for f in fields)
    placeholders = ", ".join(["%s"] * len(fields))
    sql = f'INSERT INTO "{model._meta.db_table}" ({names}) VALUES ({placeholders}) RETURNING "{model._meta.pk.column}"'
    return fields, frozenset(f.attname for f in fields), sql


# What PostgreSQL answers when a session's prepared statement no longer matches what this
# process believes: the plan's result type changed (a migration altered a selected column), the
# statement is gone (a pooler ran DISCARD ALL) or exists already (bookkeeping lost).
STALE_PREPARED = {"0A000", "26000", "42P05"}


def execute_prepared(cursor, name: str, sql: str, args: list, before: tuple[str, list] | None = None) -> None:
    """Run ``sql`` (``%s`` placeholders, each cast to its type in the text: ``%s::bigint``) as a
    server-side prepared statement, preparing it on first use in this database session.

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
            cursor.execute(f"{before[0]};\n{sql}", [*before[1], *args])
        return
    key = (name, sql)
    named = _NAMES.get(key)
    if named is None:
        named = _NAMES[key] = f"{name}_{zlib.crc32(sql.encode()):08x}"
        if len(_NAMES) > 1024:  # texts that vary without bound would be a bug; keep memory bounded anyway
            _NAMES.clear()
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
        execute = f"EXECUTE {name} ({', '.join(['%s'] * len(args))})" if args else f"EXECUTE {name}"
        if before is None:
            cursor.execute(execute, args)
        else:
            cursor.execute(f"{before[0]}; {execute}", [*before[1], *args])
    except DatabaseError as exc:
        if getattr(exc.__cause__, "pgcode", None) in STALE_PREPARED:
            db.__dict__.pop("_rows_prepared", None)  # the next request prepares on a new session
            db.close_at = 0
        raise


def _numbered(sql: str) -> str:
    """``%s`` -> ``$1``, ``$2``, ...; refuses text a plain substitution would get wrong."""
    if "%%" in sql or sql.count("%s") != sql.count("%s::"):
        raise ValueError("a prepared statement's text needs a cast on every %s placeholder and no %%")
    numbered = iter(range(1, sql.count("%s") + 1))
    return _PLACEHOLDER.sub(lambda _: f"${next(numbered)}", sql)
