"""The API served as deploy/ serves it: gunicorn's sync workers forked from a --preload master
(core.wsgi imports the URLconf and closes its database connections before the fork). Two readers
claim and submit over real HTTP, a new connection per request as sync workers require; every
task ends with its two reads from two different readers, nothing lost, anonymous callers refused."""

import httpx
import pytest
from knox.models import AuthToken

from tasks.creation import create_tasks
from tasks.models import Read, Task
from tasks.states import ReadState
from tests.servers import gunicorn_api_server
from tests.tasks.conftest import add_ct_studies

pytestmark = pytest.mark.django_db(transaction=True)  # the server reads what the test committed


def test_readers_claim_and_submit_through_the_deployed_wsgi_workers(cast, tmp_path):
    add_ct_studies(cast.project, 3)
    tasks = create_tasks(cast.project, by=cast.manager)
    readers = [cast.annotator, cast.second_annotator]
    tokens = [AuthToken.objects.create(reader)[1] for reader in readers]
    with gunicorn_api_server(tmp_path) as port:
        base = f"http://127.0.0.1:{port}"
        submitted = []
        for _ in range(3):
            for token in tokens:
                headers = {"Authorization": f"Token {token}"}
                # A new connection per request (sync workers close it): requests spread over both workers.
                claim = httpx.post(f"{base}/api/queue/next/", json={}, headers=headers, timeout=30)
                assert claim.status_code == 200, claim.text
                read = claim.json()["read"]
                done = httpx.post(f"{base}/api/reads/{read}/submit/", json={"findings": []}, headers=headers,
                                  timeout=30)
                assert done.status_code == 200, done.text
                submitted.append(read)
        nothing_left = httpx.post(f"{base}/api/queue/next/", json={}, headers={"Authorization": f"Token {tokens[0]}"},
                                  timeout=30)
        assert nothing_left.status_code == 204
        anonymous = httpx.post(f"{base}/api/queue/next/", json={}, timeout=30)
        assert anonymous.status_code == 401
    assert len(set(submitted)) == 6
    assert set(Read.objects.filter(state=ReadState.SUBMITTED).values_list("pk", flat=True)) == set(submitted)
    for task in Task.objects.filter(pk__in=[t.pk for t in tasks]):
        assert task.reads_submitted == 2
        assert set(task.reads.values_list("reader_id", flat=True)) == {r.pk for r in readers}
