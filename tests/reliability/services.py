"""A PostgreSQL and a Redis of the test's own, on free loopback ports, that a test may stop and start
again: the shared servers other tests use are never touched."""

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from core.postgresql.embedded import server_programs
from tests.servers import ROOT


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_for_port(port: int, up: bool, seconds: float = 30) -> None:
    deadline = time.monotonic() + seconds
    while True:
        with socket.socket() as s:
            s.settimeout(0.5)
            listening = s.connect_ex(("127.0.0.1", port)) == 0
        if listening == up:
            return
        assert time.monotonic() < deadline, f"port {port} still {'closed' if up else 'open'} after {seconds} s"
        time.sleep(0.1)


def postgres_bin() -> Path | None:
    """PostgreSQL's programs: Debian's where installed, else the pip wheel's (core.postgresql.embedded)."""
    return server_programs()[0]


class PrivatePostgres:
    """``initdb`` into a temporary folder, served on a free port with ``trust`` on loopback.
    PostgreSQL refuses to run as root: as root, it runs as the account server_programs names (and
    its folder is outside pytest's, which only root may enter)."""

    def __init__(self):
        (self.bin, account), self.port = server_programs(), free_port()
        self.folder = Path(tempfile.mkdtemp(prefix="radqueue-test-postgres-"))
        self.data = self.folder / "data"
        self.url = f"postgres://postgres@127.0.0.1:{self.port}/radqueue"
        self._as = ["runuser", "-u", account, "--"] if account else []
        if account:
            shutil.chown(self.folder, account)
        self._run("initdb", "-D", str(self.data), "-U", "postgres", "-A", "trust", "--no-sync", "-E", "UTF8")
        self.start()
        subprocess.run([str(self.bin / "psql"), "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres", "-q",
                        "-c", "CREATE DATABASE radqueue"], check=True, capture_output=True)

    def create_database(self, name: str, template: str = "template1") -> str:
        """A new database on this server (a copy of ``template``, which nobody may be connected to); its URL."""
        subprocess.run([str(self.bin / "psql"), "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres", "-q",
                        "-c", f'CREATE DATABASE "{name}" TEMPLATE "{template}"'], check=True, capture_output=True)
        return self.url.rsplit("/", 1)[0] + f"/{name}"

    def _run(self, program: str, *args: str) -> None:
        done = subprocess.run([*self._as, str(self.bin / program), *args], capture_output=True, text=True)
        assert done.returncode == 0, f"{program} failed:\n{done.stdout}{done.stderr}"

    def start(self) -> None:
        # fsync off: nothing here must survive a crash of the machine, only a server stop
        self._run("pg_ctl", "-D", str(self.data), "-l", str(self.folder / "postgres.log"), "-w", "-o",
                  f"-p {self.port} -k {self.folder} -c listen_addresses=127.0.0.1 -c fsync=off", "start")

    def stop(self) -> None:
        """A fast shutdown, as an operator's restart does: sessions are ended, new ones refused."""
        self._run("pg_ctl", "-D", str(self.data), "-m", "fast", "-w", "stop")

    def close(self) -> None:
        subprocess.run([*self._as, str(self.bin / "pg_ctl"), "-D", str(self.data), "-m", "immediate", "stop"],
                       capture_output=True)
        shutil.rmtree(self.folder, ignore_errors=True)


class PrivateRedis:
    """A redis-server without persistence on a free port."""

    def __init__(self, folder: Path):
        self.port, self.folder = free_port(), folder
        self.url = f"redis://127.0.0.1:{self.port}/0"
        folder.mkdir(parents=True, exist_ok=True)
        self.process: subprocess.Popen | None = None
        self.start()

    def start(self) -> None:
        self.process = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--dir", str(self.folder), "--logfile", str(self.folder / "redis.log")])
        _wait_for_port(self.port, up=True)

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.wait(timeout=15)
            self.process = None
        _wait_for_port(self.port, up=False)

    close = stop


def prepare_database(database_url: str) -> None:
    """Migrate the database and seed the demo (a project with studies and tasks, a user of every role,
    password seed_demo.DEMO_PASSWORD), as `make run` does, without Redis."""
    env = dict(os.environ, DJANGO_SETTINGS_MODULE="core.settings_test", DATABASE_URL=database_url, REDIS_URL="",
               DEBUG="1")
    for command in (["migrate", "--noinput", "-v0"], ["seed_demo"]):
        subprocess.run([sys.executable, "manage.py", *command], cwd=ROOT, env=env, check=True, capture_output=True)
