"""Synthetic studies for the demo project, ingested through the real pipeline (de-identified,
encrypted, indexed) like any upload."""

import io

from core.dicom import synthetic
from core.dicom.ingest import IngestItem, ingest_files
from core.dicom.models import Study


def _items(datasets, label: str):
    for number, ds in enumerate(datasets, start=1):
        data = synthetic.to_bytes(ds)
        yield IngestItem(f"{label} #{number}", reader=io.BytesIO(data), size=len(data))


def demo_datasets():
    """Chest CTs of two patients (one a child), a brain MR with FLAIR and post-contrast T1."""
    adult = {"name": "DEMO^ADULT", "id": "DEMO-0001", "birth_date": "19580312", "sex": "F"}
    child = {"name": "DEMO^CHILD", "id": "DEMO-0002", "birth_date": "20140704", "sex": "M"}
    yield "chest CT (adult)", synthetic.make_ct_series(n_slices=24, rows=64, cols=64, patient=adult, seed=1)
    yield "chest CT (child)", synthetic.make_ct_series(n_slices=24, rows=64, cols=64, patient=child, seed=2)
    yield "brain MR", synthetic.make_mr_study(sequences=("FLAIR", "T1", "T1_POST"), patient=adult, seed=3)


def seed_demo_studies(project) -> int:
    """Ingest the synthetic demo studies once; returns how many studies the project then has."""
    if not Study.objects.filter(project=project).exists():
        for label, datasets in demo_datasets():
            ingest_files(project, _items(datasets, label), by=None, source="demo")
    return Study.objects.filter(project=project).count()
