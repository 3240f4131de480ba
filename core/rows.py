"""Model instances from rows of plain SQL, for the few hot paths (claims, submits, token checks)
where building the query with the ORM costs several times what running it does (bench/claims.py).

``columns`` lists a model's every concrete column under a table alias; ``instance`` turns the
matching slice of a row into the instance the ORM would have built (JSON fields decoded). Only on
PostgreSQL: its driver returns the Python types the fields hold (timezone-aware datetimes); on
SQLite the ORM's converters are needed, so callers keep the ORM there.
"""

import re

from django.db import connection

_PLACEHOLDER = re.compile(r"%s")


def columns(model, alias: str) -> list[str]:
    return [f'{alias}."{f.column}"' for f in model._meta.concrete_fields]


def instance(model, values):
    """An instance from every concrete field's value, in ``columns`` order."""
    fields = model._meta.concrete_fields
    values = [f.from_db_value(v, None, connection) if v is not None and hasattr(f, "from_db_value") else v
              for f, v in zip(fields, values, strict=True)]
    return model.from_db(connection.alias, None, values)


def instances(models, row) -> list:
    """One instance per model from a row holding ``columns`` of each, in order."""
    result, start = [], 0
    for model in models:
        width = len(model._meta.concrete_fields)
        result.append(instance(model, row[start:start + width]))
        start += width
    return result


def loaded(model, **values):
    """An instance as if read with only these fields (the others are deferred: touching one loads it)."""
    names = [f.attname for f in model._meta.concrete_fields if f.attname in values]
    assert len(names) == len(values), set(values) - set(names)
    return model.from_db(connection.alias, names, [values[n] for n in names])


def execute_prepared(cursor, name: str, sql: str, args: list) -> None:
    """Run ``sql`` (``%s`` placeholders, each cast to its type in the text) as the server-side
    prepared statement ``name``, preparing it on first use in this database session.

    A hot statement with many joins or CTEs costs PostgreSQL more to plan than to run (the claim:
    0.6 ms of planning for 0.7 ms of execution); prepared, it is planned once per session (custom
    plans for its first five runs, then the generic plan if that is no worse). psycopg2 has no
    prepared statements of its own. The same ``name`` must always carry the same ``sql``. The
    statements outlive rollbacks; behind a pooler in transaction mode, use session pooling.
    """
    db = cursor.db
    prepared = db.__dict__.setdefault("_rows_prepared", {})
    if prepared.get(name) is not db.connection:
        numbered = iter(range(1, sql.count("%s") + 1))
        cursor.execute(f"PREPARE {name} AS {_PLACEHOLDER.sub(lambda _: f'${next(numbered)}', sql)}")
        prepared[name] = db.connection
    cursor.execute(f"EXECUTE {name} ({', '.join(['%s'] * len(args))})" if args else f"EXECUTE {name}", args)
