"""pgsql.prepared.execute_prepared (server-side prepared statements for the hot path),
and the answer a transaction PostgreSQL aborted against another one gets."""

import pytest
from django.db import DatabaseError, connection, transaction

from pgsql import prepared, rows

pytestmark = pytest.mark.django_db


@pytest.fixture
def kept_connection():
    before = connection.settings_dict["CONN_MAX_AGE"]
    connection.settings_dict["CONN_MAX_AGE"] = 600  # as the deployed API keeps its connections
    connection.__dict__.pop("_rows_prepared", None)
    yield connection
    connection.settings_dict["CONN_MAX_AGE"] = before
    connection.close_at = None


def _prepared_names() -> set[str]:
    with connection.cursor() as cursor:
        cursor.execute("SELECT name FROM pg_prepared_statements")
        return {name for (name,) in cursor.fetchall()}


SQL = "SELECT %s::bigint + %s::bigint, %s::text"


def test_a_statement_is_prepared_once_per_session_and_runs_with_its_arguments(kept_connection):
    with connection.cursor() as cursor:
        prepared.execute_prepared(cursor, "rq_test_sum", SQL, [2, 3, "x"])
        assert cursor.fetchone() == (5, "x")
        names = {n for n in _prepared_names() if n.startswith("rq_test_sum_")}
        assert len(names) == 1
        prepared.execute_prepared(cursor, "rq_test_sum", SQL, [40, 2, "it's"])  # quoting is the driver's
        assert cursor.fetchone() == (42, "it's")
    assert {n for n in _prepared_names() if n.startswith("rq_test_sum_")} == names  # not prepared again


def test_text_a_plain_substitution_would_get_wrong_is_refused(kept_connection):
    with connection.cursor() as cursor, pytest.raises(ValueError, match="cast"):
        prepared.execute_prepared(cursor, "rq_test_uncast", "SELECT %s + 1", [1])


def test_a_session_whose_statements_vanished_fails_once_and_is_closed_after_the_request(kept_connection):
    with connection.cursor() as cursor:
        prepared.execute_prepared(cursor, "rq_test_sum", SQL, [1, 1, "a"])
        cursor.execute("DEALLOCATE ALL")  # what a pooler's DISCARD ALL does behind the process's back
        with pytest.raises(DatabaseError), transaction.atomic():
            prepared.execute_prepared(cursor, "rq_test_sum", SQL, [1, 1, "a"])
    assert connection.close_at == 0 and "_rows_prepared" not in connection.__dict__
    with connection.cursor() as cursor:  # forgotten: the next call prepares again and works
        prepared.execute_prepared(cursor, "rq_test_sum", SQL, [1, 2, "b"])
        assert cursor.fetchone() == (3, "b")


def test_without_kept_connections_the_statement_runs_unprepared(kept_connection):
    connection.settings_dict["CONN_MAX_AGE"] = 0
    with connection.cursor() as cursor:
        prepared.execute_prepared(cursor, "rq_test_plain", SQL, [1, 2, "c"])
        assert cursor.fetchone() == (3, "c")
    assert not {n for n in _prepared_names() if n.startswith("rq_test_plain_")}


@pytest.mark.parametrize("kept", [True, False], ids=["prepared", "unprepared"])
def test_a_statement_sent_before_runs_first_in_the_same_transaction(kept_connection, kept):
    """``before`` (the claim's advisory lock) goes in the same message: it runs first, in the same
    transaction (PostgreSQL's implicit one), and the statement's rows are what comes back."""
    if not kept:
        connection.settings_dict["CONN_MAX_AGE"] = 0
    with connection.cursor() as cursor:
        prepared.execute_prepared(cursor, "rq_test_after", "SELECT %s::bigint, txid_current()::bigint", [7],
                              before=("SELECT txid_current(), set_config('rq.test', %s, true)", ["set"]))
        value, txid = cursor.fetchone()
        assert value == 7
        cursor.execute("SELECT txid_current()")
        inside = cursor.fetchone()[0] == txid  # pytest-django's test transaction: the same one
        assert inside == (not connection.get_autocommit())
        prepared.execute_prepared(cursor, "rq_test_after", "SELECT current_setting('rq.test', true)::text", [],
                              before=("SELECT set_config('rq.test', %s, true)", ["seen"]))
        assert cursor.fetchone() == ("seen",)  # the setting (transaction-local) was in force


@pytest.mark.parametrize("kept", [True, False], ids=["prepared", "unprepared"])
def test_named_arguments_may_recur_and_go_with_a_named_statement_before(kept_connection, kept):
    """The claim's form: every placeholder named and cast, a name used more than once, and the
    reader's lock sent before it with the same names."""
    if not kept:
        connection.settings_dict["CONN_MAX_AGE"] = 0
    sql = "SELECT %(a)s::bigint + %(b)s::bigint, %(a)s::bigint * 10, %(word)s::text"
    with connection.cursor() as cursor:
        for a, b, word in ((2, 3, "x"), (40, 2, "it's")):
            prepared.execute_prepared(cursor, "rq_test_named", sql, {"a": a, "b": b, "word": word, "unused": 1},
                                      before=("SELECT set_config('rq.test', %(word)s, true)", {"word": word}))
            assert cursor.fetchone() == (a + b, a * 10, word)
    if kept:
        assert {n for n in _prepared_names() if n.startswith("rq_test_named_")}


def test_a_named_placeholder_without_its_cast_is_refused(kept_connection):
    with connection.cursor() as cursor, pytest.raises(ValueError, match="cast"):
        prepared.execute_prepared(cursor, "rq_test_named_uncast", "SELECT %(a)s::bigint + %(a)s", {"a": 1})


def test_loaded_builds_what_the_orm_would_with_the_rest_deferred(cast):
    from core.models import Project

    project = Project.objects.get(pk=cast.project.pk)
    built = rows.loaded(Project, id=project.pk, name=project.name, lease_seconds=project.lease_seconds)
    read = Project.objects.only("id", "name", "lease_seconds").get(pk=project.pk)
    assert built == read and built.get_deferred_fields() == read.get_deferred_fields()
    assert not built._state.adding and built._state.db == read._state.db
    assert built.max_open_reads == project.max_open_reads  # a deferred field loads on use
    built.name = "Renamed"
    built.save(update_fields=["name"])
    assert Project.objects.get(pk=project.pk).name == "Renamed"
    with pytest.raises(TypeError, match="no_such_field"):
        rows.loaded(Project, id=1, no_such_field=2)


def test_a_deadlock_postgresql_broke_answers_409_retry_and_stores_nothing(cast, api, monkeypatch):
    """A claim that met another transaction head-on (PostgreSQL aborts one of two that wait on
    each other) tells the client to retry instead of answering 500."""
    from django.db import OperationalError

    from tasks import queue
    from tasks.models import Read

    class DriverDeadlock(Exception):  # what psycopg2 raises, with its SQLSTATE
        pgcode = "40P01"

    def deadlocked(*args, **kwargs):
        raise OperationalError("deadlock detected") from DriverDeadlock()

    monkeypatch.setattr(queue, "claim_next_read", deadlocked)
    response = api(cast.annotator).post("/api/queue/next/", {}, format="json")
    assert response.status_code == 409 and response["Retry-After"] == "1"
    assert response.json()["code"] == "concurrent_change" and "Retry" in response.json()["detail"]
    assert not Read.objects.exists()


def test_insert_stores_what_the_orms_create_would_and_names_what_is_missing(cast):
    from django.db.models.signals import pre_save
    from django.utils import timezone

    from core.models import Organization

    now = timezone.now()
    made = rows.insert(Organization, name="Inserted", kind="client", created_at=now)
    stored = Organization.objects.get(pk=made.pk)
    assert (stored.name, stored.kind, stored.created_at) == ("Inserted", "client", made.created_at)
    assert made == stored and not made._state.adding
    assert made.created_at == now  # the plain INSERT stores the given time (the ORM's auto_now_add its own)
    with pytest.raises(TypeError, match=r"missing \['created_at'\]"):
        rows.insert(Organization, name="No date", kind="client")
    with pytest.raises(TypeError, match=r"unknown \['colour'\]"):
        rows.insert(Organization, name="Odd", kind="client", created_at=now, colour="red")
    assert not Organization.objects.filter(name__in=["No date", "Odd"]).exists()

    seen = []

    def receiver(sender, instance, **kwargs):
        seen.append(instance.name)

    pre_save.connect(receiver, sender=Organization)
    try:  # a receiver listens: the ORM creates it, so the receiver sees it
        rows.insert(Organization, name="Watched", kind="vendor", created_at=now)
    finally:
        pre_save.disconnect(receiver, sender=Organization)
    assert seen == ["Watched"] and Organization.objects.filter(name="Watched").exists()
