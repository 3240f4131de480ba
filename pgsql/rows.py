"""Model instances from rows of plain SQL, for the few hot paths (claims, submits, token checks)
where building the query with the ORM costs several times what running it does (bench/claims.py).

``columns`` lists a model's every concrete column under a table alias; ``instance`` turns the
matching slice of a row into the instance the ORM would have built (JSON fields decoded):
PostgreSQL's driver returns the Python types the fields hold (timezone-aware datetimes).
"""

import functools

from django.db import DEFAULT_DB_ALIAS, connection
from django.db.models import signals
from django.db.models.base import ModelState


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
