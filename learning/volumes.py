"""Volumes for the models: a task's series, decrypted from the store and stacked (core.dicom.volume)."""

import io

import pydicom

from core.dicom.models import Series
from core.dicom.storage import get_store
from core.dicom.volume import Volume, load_volume
from tasks.models import Task


def series_for(task: Task, modality: str = "") -> Series | None:
    """The task's own series, or the study's largest series of the model's modality."""
    if task.series_id:
        return task.series
    series = task.study.series.all()
    if modality:
        series = series.filter(modality__iexact=modality)
    return series.order_by("-instance_count", "id").first()


def volume_of(task: Task, modality: str = "") -> Volume:
    """Raises ValueError naming the problem when the task has no usable series."""
    series = series_for(task, modality)
    if series is None:
        raise ValueError(f"task {task.pk}: no {modality or 'image'} series")
    store = get_store()
    datasets = [pydicom.dcmread(io.BytesIO(store.read_bytes(name)))
                for name in series.instances.filter(is_quarantined=False).values_list("storage_name", flat=True)]
    return load_volume(datasets)
