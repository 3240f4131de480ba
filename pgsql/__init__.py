"""Plain SQL on PostgreSQL for every app: model instances from rows (rows) and server-side prepared
statements (prepared). It imports no app, so the audit trail, the lowest app, may use it.

Why plain SQL at all, said once: on the hot paths (claim, submit, token check, the audit append) the
ORM's building of a query cost several times PostgreSQL's running of it (bench/claims.py), so those
statements are written out, and everything else uses the ORM.
"""
