"""The source instances of a task, read back from the encrypted store in the order findings index them."""

import io
from dataclasses import dataclass, field

import pydicom

from core.dicom.models import Instance
from core.dicom.storage import get_store
from tasks.findings.geometry import StudyGeom
from tasks.findings.loading import study_geometry


@dataclass
class TaskSources:
    """A task's study geometry (slice order of every series) and its de-identified datasets, loaded lazily."""

    geometry: StudyGeom
    storage_names: dict[str, str]
    _datasets: dict[str, pydicom.Dataset] = field(default_factory=dict)

    def dataset(self, sop_instance_uid: str) -> pydicom.Dataset:
        if sop_instance_uid not in self._datasets:
            data = get_store().read_bytes(self.storage_names[sop_instance_uid])
            self._datasets[sop_instance_uid] = pydicom.dcmread(io.BytesIO(data))
        return self._datasets[sop_instance_uid]

    def series_datasets(self, series_uid: str) -> list[pydicom.Dataset]:
        """The series' datasets in slice order k, the order mask run lengths and slice indices use."""
        return [self.dataset(g.sop_instance_uid) for g in self.geometry.series[series_uid].instances]


def sources_of(task) -> TaskSources:
    names = dict(Instance.objects.filter(series__study=task.study, is_quarantined=False)
                 .values_list("sop_instance_uid", "storage_name"))
    return TaskSources(geometry=study_geometry(task.study), storage_names=names)
