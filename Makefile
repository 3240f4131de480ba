# radqueue: `make run` serves a seeded demo on 127.0.0.1:8000, `make test` runs the test suite.
PY ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
HOST ?= 127.0.0.1
PORT ?= 8000

# Without DATABASE_URL, run and test go through the embedded PostgreSQL (core/postgresql/embedded.py:
# the server from a pip wheel, data under var/postgres, stopped when the command ends).
ON_DB := $(if $(DATABASE_URL),,$(BIN)/python -m core.postgresql.embedded run --)

.PHONY: run serve test pytest install migrate lint check-migrations schema clean ohif ohif-if-possible

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip setuptools wheel
	$(BIN)/pip install -q -e '.[dev]'
	touch $(STAMP)

install: $(STAMP) ohif-if-possible

# The OHIF viewer's build (@ohif/app, pinned with its integrity hash) into var/ohif/, ignored. install
# (so run and test) tries it and goes on without it: /viewer/ then says it is not installed and how.
ohif:
	deploy/fetch_ohif.sh

ohif-if-possible:
	@deploy/fetch_ohif.sh || echo "make: the OHIF viewer could not be fetched (is the npm registry reachable?); radqueue runs without it; install it later with: make ohif"

migrate: install
	$(BIN)/python manage.py migrate --noinput

# With REDIS_URL set, jobs go through Redis: honcho runs the Procfile (the server, a Celery worker and
# beat), prefixes their output and stops all three when one exits or on Ctrl-C. Without it, jobs run
# in the server's process as they are asked for (Celery eager) and nothing runs the schedule.
run: install
	$(ON_DB) $(MAKE) --no-print-directory serve

serve: migrate
	$(BIN)/python manage.py seed_demo --url http://$(HOST):$(PORT)
	@mkdir -p var
	@if [ -n "$$REDIS_URL" ]; then \
	  echo "make run: REDIS_URL is set: serving http://$(HOST):$(PORT)/ with a Celery worker (queues celery, learning) and beat (lease sweep, token purge, stale jobs) beside it; Ctrl-C stops all three"; \
	  HOST=$(HOST) exec $(BIN)/honcho start -f Procfile -p $(PORT); \
	else \
	  echo "make run: no REDIS_URL: serving http://$(HOST):$(PORT)/ with jobs run in-process (Celery eager) and no beat: expired leases are swept by claims, expired tokens refused but not purged"; \
	  exec $(BIN)/uvicorn core.asgi:application --host $(HOST) --port $(PORT); \
	fi

test: install
	$(ON_DB) $(MAKE) --no-print-directory pytest

pytest: install
	$(BIN)/python manage.py makemigrations --check --dry-run
	$(BIN)/pytest $(PYTEST_ARGS)

lint: install
	$(BIN)/ruff check .
	$(BIN)/lint-imports

schema: install
	$(ON_DB) $(BIN)/python manage.py spectacular --validate --fail-on-warn --file /dev/null

clean:
	rm -rf $(VENV) var
