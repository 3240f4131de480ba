"""DICOM SR (TID 1500 Measurement Report, Comprehensive 3D SR) of a task's boxes, outlines, points and
measurements, made with highdicom.

Each finding is one measurement group with the label's concept as finding type. 2D geometry goes
in SCOORD (pixel coordinates as stored: column, row, top-left corner 0,0) on the source image and
frame; a 3D box becomes one rectangle per slice it spans (same tracking UID); a point in patient
millimetres becomes an SCOORD3D point in the series' frame of reference. Measurements carry their
value in their UCUM unit. Masks go to the SEG (tasks.exports.seg); classifications to CSV/JSON.
"""

import io

import highdicom as hd
import numpy as np

from tasks.exports.dicom_common import concept_of, device, pseudonymous_patient_names

IMAGING_PROCEDURE = hd.sr.CodedConcept("363679005", "SCT", "Imaging procedure")


def _closed(points) -> np.ndarray:
    points = [list(map(float, p)) for p in points]
    return np.array([*points, points[0]], dtype=float)


def _rectangle(x0, y0, x1, y1) -> np.ndarray:
    return _closed([(x0, y0), (x1, y0), (x1, y1), (x0, y1)])


class _Report:
    def __init__(self, task, sources):
        self.task, self.sources = task, sources
        self.groups: list = []
        self.evidence: dict[str, object] = {}

    def source(self, sop_instance_uid: str, frame: int = 1) -> hd.sr.SourceImageForRegion:
        ds = self.sources.dataset(sop_instance_uid)
        self.evidence[sop_instance_uid] = ds
        frames = [frame] if int(ds.get("NumberOfFrames", 1) or 1) > 1 else None
        return hd.sr.SourceImageForRegion.from_source_image(ds, referenced_frame_numbers=frames)

    def region(self, graphic_type, points, ref: dict) -> hd.sr.ImageRegion:
        return hd.sr.ImageRegion(graphic_type=graphic_type, graphic_data=np.asarray(points, dtype=float),
                                 source_image=self.source(ref["sop_instance_uid"], ref.get("frame", 1)))

    def planar(self, finding: dict, n: int, region, measurements=None, uid=None) -> None:
        tracking = hd.sr.TrackingIdentifier(uid=uid or hd.UID(), identifier=f"task {self.task.pk} finding {n}")
        self.groups.append(hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations(
            tracking_identifier=tracking, referenced_region=region, finding_type=concept_of(finding),
            measurements=measurements))

    def measurement(self, finding: dict) -> list:
        unit = finding.get("unit") or "1"
        return [hd.sr.Measurement(name=concept_of(finding), value=float(finding["value"]),
                                  unit=hd.sr.CodedConcept(unit, "UCUM", unit))]

    def add(self, finding: dict, n: int) -> None:
        lines = hd.sr.GraphicTypeValues.POLYLINE
        if "bbox" in finding and finding["bbox"]:
            box = finding["bbox"]
            self.planar(finding, n, self.region(lines, _rectangle(box["x0"], box["y0"], box["x1"], box["y1"]), box))
        elif "bbox3d" in finding and finding["bbox3d"]:
            box = finding["bbox3d"]
            instances = self.sources.geometry.series[box["series_uid"]].instances
            uid = hd.UID()
            for k in range(box["min"][2], box["max"][2]):
                ref = {"sop_instance_uid": instances[k].sop_instance_uid}
                rectangle = _rectangle(box["min"][0], box["min"][1], box["max"][0], box["max"][1])
                self.planar(finding, n, self.region(lines, rectangle, ref), uid=uid)
        elif finding.get("kind") == "polygon" and finding.get("polygon"):
            self.planar(finding, n, self.region(lines, _closed(finding["polygon"]["points"]), finding["polygon"]))
        elif "point" in finding and finding["point"]:
            point = finding["point"]
            self.planar(finding, n, self.region(hd.sr.GraphicTypeValues.POINT, [[point["x"], point["y"]]], point))
        elif "point_mm" in finding and finding["point_mm"]:
            point = finding["point_mm"]
            ds = self.sources.dataset(point["sop_instance_uid"])
            self.evidence[point["sop_instance_uid"]] = ds
            region = hd.sr.ImageRegion3D(graphic_type=hd.sr.GraphicTypeValues3D.POINT,
                                         graphic_data=np.array([point["xyz"]], dtype=float),
                                         frame_of_reference_uid=ds.FrameOfReferenceUID)
            self.planar(finding, n, region)
        elif finding.get("kind") == "measurement" and "value" in finding:
            if finding.get("line"):
                self.planar(finding, n, self.region(lines, finding["line"]["points"], finding["line"]),
                            self.measurement(finding))
            elif finding.get("polygon"):
                self.planar(finding, n, self.region(lines, _closed(finding["polygon"]["points"]), finding["polygon"]),
                            self.measurement(finding))
            else:  # a value alone, or over a mask (the mask itself is in the SEG)
                tracking = hd.sr.TrackingIdentifier(uid=hd.UID(), identifier=f"task {self.task.pk} finding {n}")
                self.groups.append(hd.sr.MeasurementsAndQualitativeEvaluations(
                    tracking_identifier=tracking, finding_type=concept_of(finding),
                    measurements=self.measurement(finding)))


def measurement_report(task, sources) -> bytes | None:
    """The task's SR, or None when its consensus has nothing an SR carries."""
    report = _Report(task, sources)
    for n, finding in enumerate(task.consensus.findings):
        report.add(finding, n)
    if not report.groups:
        return None
    if not report.evidence:  # measurements without geometry still reference the study's images
        first = next(iter(sources.geometry.series.values())).instances[0]
        report.evidence[first.sop_instance_uid] = sources.dataset(first.sop_instance_uid)
    observer = hd.sr.ObserverContext(
        observer_type=hd.sr.CodedConcept("121007", "DCM", "Device"),
        observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(uid=hd.UID(), name="radqueue"))
    content = hd.sr.MeasurementReport(
        observation_context=hd.sr.ObservationContext(observer_device_context=observer),
        procedure_reported=IMAGING_PROCEDURE, imaging_measurements=report.groups)
    with pseudonymous_patient_names():
        sr = hd.sr.Comprehensive3DSR(
            evidence=list(report.evidence.values()), content=content, series_instance_uid=hd.UID(),
            series_number=9100, sop_instance_uid=hd.UID(), instance_number=1, manufacturer=device()["manufacturer"],
            is_complete=True)
    buffer = io.BytesIO()
    sr.save_as(buffer)
    return buffer.getvalue()
