import io

import pytest

from core.dicom import synthetic
from core.dicom.ingest import IngestItem, ingest_files
from core.dicom.models import Study
from tasks.creation import create_tasks


def ingest_series(project, datasets):
    items = [IngestItem(str(i), reader=io.BytesIO(synthetic.to_bytes(ds))) for i, ds in enumerate(datasets)]
    return ingest_files(project, items, by=None, source="folder")


def add_ct_studies(project, count: int, *, seed: int = 100, **kwargs):
    for n in range(count):
        patient = {"name": f"PAT^{n}", "id": f"P{seed + n}", **kwargs.pop("patient", {})}
        ingest_series(project, synthetic.make_ct_series(n_slices=2, rows=16, cols=16, seed=seed + n,
                                                         patient=patient, **kwargs))
    return list(Study.objects.filter(project=project).order_by("id"))


@pytest.fixture
def queued(cast):
    """Three CT studies with a task each (k = 2), in the order they were created."""
    add_ct_studies(cast.project, 3)
    return create_tasks(cast.project, by=cast.manager)
