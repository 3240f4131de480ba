"""DICOMweb (PS3.18) at /dicomweb/: QIDO-RS from the index, WADO-RS and rendered images from the
encrypted store, STOW-RS into the ingest service. Enough for OHIF Viewer and dicomweb-client.

Scoped by core.dicom.scopes (the project-wide root, a read's, an adjudication's: 404 for what the
caller may not reach there) and audited per request.
"""

import io
import json
import re
import secrets
from collections.abc import Iterable, Iterator

import numpy as np
import pydicom
from django.conf import settings
from django.db.models import Q, QuerySet
from django.http import HttpResponse, JsonResponse, StreamingHttpResponse
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema
from pydicom.datadict import tag_for_keyword
from pydicom.encaps import get_frame
from rest_framework.negotiation import BaseContentNegotiation
from rest_framework.parsers import BaseParser
from rest_framework.renderers import JSONRenderer
from rest_framework.views import APIView

from audit.recorder import AuditedViewMixin
from core.dicom import metadata, negotiation, part10
from core.dicom.deid import zero_preamble
from core.dicom.ingest import IngestItem, ingest_files
from core.dicom.models import Instance, Series, Study
from core.dicom.scopes import Scope
from core.dicom.storage import get_store
from core.dicom.stow import StowError, parse_stow_body
from core.errors import DomainError, NotFound
from core.roles import Perm
from core.selectors import get_project_for, projects_visible_to

DICOM_JSON = "application/dicom+json"
TAG_RE = re.compile(r"^[0-9A-Fa-f]{8}$")


class AnyContentNegotiation(BaseContentNegotiation):
    """DICOMweb answers by its own Accept rules; DRF must not refuse multipart/related with 406."""

    def select_parser(self, request, parsers):
        return parsers[0] if parsers else None

    def select_renderer(self, request, renderers, format_suffix=None):
        return renderers[0], renderers[0].media_type


class UnreadBodyParser(BaseParser):
    """Leaves the body unread for core.dicom.stow, which streams it. DRF parses a body whenever
    anything reads request.POST, and Django's CSRF check (a session-authenticated POST: OHIF's save)
    does, before the header is looked at: with DRF's JSON parser first, a STOW answered 400."""

    media_type = "*/*"

    def parse(self, stream, media_type=None, parser_context=None):
        return {}


class DicomwebError(DomainError):
    pass


class NotAcceptable(DomainError):
    status_code = 406
    default_code = "not_acceptable"


# --- DICOM JSON attributes of the index ----------------------------------------------------

def _attr(vr: str, *values) -> dict:
    values = [v for v in values if v not in (None, "")]
    if not values:
        return {"vr": vr}
    if vr == "PN":
        return {"vr": vr, "Value": [{"Alphabetic": str(v)} for v in values]}
    if vr in ("IS", "US", "UL"):
        return {"vr": vr, "Value": [int(v) for v in values]}
    if vr in ("DS", "FD", "FL"):
        return {"vr": vr, "Value": [float(v) for v in values]}
    return {"vr": vr, "Value": [str(v) for v in values]}


def public_url(request, path: str) -> str:
    """``path`` (from the server's root, "/dicomweb/...") as clients reach it: under PUBLIC_BASE_URL
    when that is set, else from the request's Host header.

    Every URL radqueue puts in a DICOMweb body (RetrieveURL, BulkDataURI, Content-Location) is built
    here. The Host header is not always the address the client used: dicomweb-client sends the bare
    host name without its port, and a proxy may rewrite it.
    """
    if settings.PUBLIC_BASE_URL:
        return settings.PUBLIC_BASE_URL + path
    return request.build_absolute_uri(path)


def _base_url(request) -> str:
    """The root the request came through (DicomwebView.initial notes its scope's): every URL in a
    body stays under it, so a read's viewer never leaves the read's root."""
    return public_url(request, getattr(request, "dicomweb_root", "/dicomweb"))


def _age(years: int | None) -> str | None:
    return None if years is None else f"{years:03d}Y"


def study_json(study: Study, base: str) -> dict:
    """Every study attribute the index holds. Those de-identification removes (accession number,
    referring physician, birth date) are present and empty, as a query for them should find."""
    return {
        "00080020": _attr("DA", study.study_date),
        "00080050": _attr("SH"),
        "00080061": _attr("CS", *study.modalities),
        "00080090": _attr("PN"),
        "00081030": _attr("LO", study.description),
        "00081190": _attr("UR", f"{base}/studies/{study.study_uid}"),
        "00100010": _attr("PN", study.patient_pseudonym),
        "00100020": _attr("LO", study.patient_pseudonym),
        "00100030": _attr("DA"),
        "00101010": _attr("AS", _age(study.patient_age_years)),
        "0020000D": _attr("UI", study.study_uid),
        "00201206": _attr("IS", study.series_count),
        "00201208": _attr("IS", study.instance_count),
    }


def series_json(series: Series, base: str) -> dict:
    study_uid = series.study.study_uid
    return {
        "00080060": _attr("CS", series.modality),
        "0008103E": _attr("LO", series.description),
        "00081190": _attr("UR", f"{base}/studies/{study_uid}/series/{series.series_uid}"),
        "00180015": _attr("CS", series.body_part),
        "0020000D": _attr("UI", study_uid),
        "0020000E": _attr("UI", series.series_uid),
        "00200011": _attr("IS", series.number),
        "00200052": _attr("UI", series.frame_of_reference_uid),
        "00201209": _attr("IS", series.instance_count),
    }


def instance_json(instance: Instance, base: str) -> dict:
    series = instance.series
    study_uid = series.study.study_uid
    return {
        "00080008": _attr("CS", *(instance.image_type or [])),
        "00080016": _attr("UI", instance.sop_class_uid),
        "00080018": _attr("UI", instance.sop_instance_uid),
        "00080060": _attr("CS", series.modality),
        "00081190": _attr("UR", f"{base}/studies/{study_uid}/series/{series.series_uid}/instances/"
                                f"{instance.sop_instance_uid}"),
        "00083002": _attr("UI", instance.transfer_syntax_uid),
        "00180050": _attr("DS", instance.slice_thickness),
        "0020000D": _attr("UI", study_uid),
        "0020000E": _attr("UI", series.series_uid),
        "00200013": _attr("IS", instance.instance_number),
        "00200032": _attr("DS", *(instance.position or [])),
        "00200037": _attr("DS", *(instance.orientation or [])),
        "00200052": _attr("UI", series.frame_of_reference_uid),
        "00280008": _attr("IS", instance.frames),
        "00280010": _attr("US", instance.rows),
        "00280011": _attr("US", instance.columns),
        "00280030": _attr("DS", *(instance.pixel_spacing or [])),
    }


# What a query answers without includefield: PS3.18 Table 10.6.3-3's required attributes of each
# level that the index holds (the rest of what it holds is returned when named, or for "all").
STUDY_DEFAULT = frozenset({"00080020", "00080050", "00080061", "00081030", "00081190", "00100010", "00100020",
                           "0020000D", "00201206", "00201208"})
SERIES_DEFAULT = frozenset({"00080060", "0008103E", "00081190", "00180015", "0020000D", "0020000E", "00200011",
                            "00201209"})
INSTANCE_DEFAULT = frozenset({"00080016", "00080018", "00080060", "00081190", "0020000D", "0020000E", "00200013",
                              "00280008", "00280010", "00280011"})


# --- QIDO matching ----------------------------------------------------------------------------

KEYWORD_TAGS = {
    "PatientID": "00100020", "PatientName": "00100010", "StudyDate": "00080020",
    "ModalitiesInStudy": "00080061", "StudyInstanceUID": "0020000D", "StudyDescription": "00081030",
    "AccessionNumber": "00080050", "Modality": "00080060", "SeriesInstanceUID": "0020000E",
    "SeriesNumber": "00200011", "SeriesDescription": "0008103E", "SOPInstanceUID": "00080018",
    "SOPClassUID": "00080016", "InstanceNumber": "00200013", "BodyPartExamined": "00180015",
}
TAG_KEYWORDS = {tag: kw for kw, tag in KEYWORD_TAGS.items()}
CONTROL_PARAMS = {"limit", "offset", "includefield", "fuzzymatching", "project"}


def _wildcard(value: str) -> str | None:
    """A DICOM wildcard match (* and ?) as an anchored regex; None when the value has no wildcard."""
    if "*" not in value and "?" not in value:
        return None
    return "^" + re.escape(value).replace(r"\*", ".*").replace(r"\?", ".") + "$"


def _match(qs: QuerySet, field: str, value: str) -> QuerySet:
    pattern = _wildcard(value)
    return qs.filter(**{f"{field}__iregex": pattern}) if pattern else qs.filter(**{field: value})


def _fuzzy(value: str) -> bool:
    return value.strip().lower() == "true"


def _match_person_name(qs: QuerySet, field: str, value: str, *, fuzzy: bool) -> QuerySet:
    """PN matching (PS3.4 C.2.2.2.1). With fuzzymatching=true and no wildcard: case-insensitive, each
    component given a prefix of the stored one's, and a single word may match any component's start
    ("smi" finds "SMITH^JOHN" and "JOHN SMITH"). Otherwise as any other string."""
    if not fuzzy or _wildcard(value) is not None:
        return _match(qs, field, value)
    components = value.split("^")
    if len(components) == 1:
        pattern = r"(^|[\^ =])" + re.escape(value)
    else:
        pattern = "^" + r"[^^=]*\^".join(re.escape(c) for c in components)
    return qs.filter(**{f"{field}__iregex": pattern})


def _included(request) -> tuple[bool, frozenset[str], list[str]]:
    """What includefield asks for (PS3.18 8.3.4.3: keywords or tags, comma-separated or repeated):
    whether it says "all", the tags it names, and the names that are neither."""
    everything, tags, unknown = False, set(), []
    for value in request.query_params.getlist("includefield"):
        for name in filter(None, (v.strip() for v in value.split(","))):
            if name.lower() == "all":
                everything = True
            elif TAG_RE.match(name):
                tags.add(name.upper())
            elif (tag := tag_for_keyword(name)) is not None:
                tags.add(f"{tag:08X}")
            else:
                unknown.append(name)
    return everything, frozenset(tags), unknown


def _shaped(attrs: dict, default: frozenset[str], included: tuple[bool, frozenset[str], list[str]]) -> dict:
    everything, tags, _ = included
    return attrs if everything else {tag: v for tag, v in attrs.items() if tag in default or tag in tags}


def _uid_list(value: str) -> list[str]:
    return [v for v in re.split(r"[,\\]", value) if v]


def _date_range(qs: QuerySet, field: str, value: str) -> QuerySet:
    if not re.fullmatch(r"\d{8}|\d{8}-|-\d{8}|\d{8}-\d{8}", value):
        raise DicomwebError(f"StudyDate must be YYYYMMDD or a range YYYYMMDD-YYYYMMDD, not {value!r}",
                            code="bad_query")
    if "-" not in value:
        return qs.filter(**{field: value})
    start, end = value.split("-")
    if start:
        qs = qs.filter(**{f"{field}__gte": start})
    if end:
        qs = qs.filter(**{f"{field}__lte": end})
    return qs.exclude(**{field: ""})


def _query_params(request) -> tuple[dict[str, str], list[str]]:
    """Matching keys (by keyword) from the query string, and the unsupported ones."""
    matches, unsupported = {}, []
    for key in request.query_params:
        if key in CONTROL_PARAMS:
            continue
        keyword = TAG_KEYWORDS.get(key.upper(), key) if TAG_RE.match(key) else key
        if keyword in KEYWORD_TAGS:
            matches[keyword] = ",".join(request.query_params.getlist(key))
        else:
            unsupported.append(key)
    return matches, unsupported


def _paged(request, qs: QuerySet) -> QuerySet:
    try:
        offset = int(request.query_params.get("offset", 0))
        limit = int(request.query_params.get("limit", 1000))
    except ValueError:
        raise DicomwebError("limit and offset must be whole numbers", code="bad_query") from None
    if offset < 0 or limit < 0:
        raise DicomwebError("limit and offset must not be negative", code="bad_query")
    if offset >= 2**62:
        return qs.none()  # past any table's rows, and past what PostgreSQL's OFFSET takes (a bigint)
    return qs[offset:offset + min(limit, 5000)]


_HEADER_SAFE_KEY = re.compile(r"[A-Za-z0-9.]{1,64}")


def _listed(keys: list[str]) -> str:
    # A header carries only what a header may: a query key is client input, so only keys shaped like
    # a DICOM keyword or tag (letters, digits, dots) are named, the rest counted. Echoing a key with a
    # newline or control character in it made the response unsendable (a 500, or a dropped connection).
    named = [key for key in keys if _HEADER_SAFE_KEY.fullmatch(key)]
    others = len(keys) - len(named)
    return ", ".join(named) + (", " if named and others else "") + (
        f"{others} other parameter{'s' if others != 1 else ''}" if others else "")


def _qido_response(items: list[dict], unsupported: list[str], unknown_fields: list[str] | None = None) -> HttpResponse:
    response = JsonResponse(items, safe=False, content_type=DICOM_JSON)
    warnings = []
    if unsupported:
        warnings.append(f"299 radqueue \"The following attributes are not supported for matching: "
                        f"{_listed(unsupported)}\"")
    if unknown_fields:
        warnings.append(f"299 radqueue \"includefield names unknown attributes: {_listed(unknown_fields)}\"")
    if warnings:
        response["Warning"] = ", ".join(warnings)  # one field, comma-separated (RFC 7234 5.5)
    if not items:
        response.status_code = 200
    return response


# --- the views -------------------------------------------------------------------------------

class DicomwebView(AuditedViewMixin, APIView):
    """Every DICOMweb view: what it serves comes from its scope (core.dicom.scopes), the project-wide
    root unless the URL mounts it under a read's or an adjudication's."""

    content_negotiation_class = AnyContentNegotiation
    parser_classes = [UnreadBodyParser]
    renderer_classes = [JSONRenderer]
    audit_object_type = "core.study"
    scope_class: type[Scope] = Scope
    scope: Scope | None = None

    def dispatch(self, request, *args, **kwargs):
        # The scope's URL kwargs (the read id) are the scope's, not the handlers'.
        self.scope_kwargs = {name: kwargs.pop(name) for name in self.scope_class.url_kwargs if name in kwargs}
        return super().dispatch(request, *args, **kwargs)

    def initial(self, request, *args, **kwargs):
        super().initial(request, *args, **kwargs)  # authenticated, or refused, before the scope is looked up
        self.scope = self.scope_class(request.user, **self.scope_kwargs)
        request.dicomweb_root = self.scope.root_path

    def audit_target(self):
        study_uid = self.kwargs.get("study", "")
        project_id = getattr(self, "_audit_project_id", None)
        if project_id is None and self.scope is not None:
            project_id = getattr(self.scope, "project_id", None)
        object_id = self.kwargs.get("instance") or self.kwargs.get("series") or study_uid
        return project_id, object_id, study_uid

    def audit_action(self, request):
        return self.audit_verb

    def audit_protocol_version(self):
        return None if self.scope is None else self.scope.protocol_version(getattr(self, "_audit_study", None))

    def audit_extra(self) -> dict:
        return {} if self.scope is None else self.scope.audit_extra()

    audit_verb = "view"

    def study(self, uid) -> Study:
        study = self.scope.studies().filter(study_uid=uid).first()
        if study is None:
            raise NotFound("No such study.")
        self._audit_project_id, self._audit_study = study.project_id, study
        return study

    def series_of(self, study: Study, uid) -> Series:
        series = self.scope.series(study).filter(series_uid=uid).select_related("study").first()
        if series is None:
            raise NotFound("No such series.")
        return series

    def instances(self) -> QuerySet[Instance]:
        return self.scope.instances().select_related("series__study")

    def instance_at(self, study_uid, series_uid, sop_uid) -> Instance:
        """One instance by its three UIDs, in one lookup: what frames, bulk data and rendered images
        ask for once per frame, so the study and series are not looked up on their own first."""
        instance = self.scope.instance_at(study_uid, series_uid, sop_uid)
        if instance is None:
            raise NotFound("No such instance.")
        self._audit_project_id, self._audit_study = instance.project_id, self.scope.audit_study(instance)
        return instance

    def instance_of(self, series: Series, uid) -> Instance:
        instance = self.instances().filter(series=series, sop_instance_uid=uid).first()
        if instance is None:
            raise NotFound("No such instance.")
        return instance

    def series_attrs(self, series: Series, base: str) -> dict:
        attrs = series_json(series, base)
        if (description := self.scope.series_description(series)) is not None:
            attrs["0008103E"] = _attr("LO", description)
        return attrs


QIDO_PARAMS = [
    OpenApiParameter("limit", int), OpenApiParameter("offset", int),
    OpenApiParameter("includefield", str, description=(
        "Attributes to return beyond the level's defaults, by keyword or tag (comma-separated or repeated), or "
        "`all` for every attribute the index holds (a series or instance query includes the study's and series')."
        " Unknown keywords are named in a Warning header.")),
    OpenApiParameter("fuzzymatching", bool, description=(
        "`true`: PatientName matches case-insensitively by the prefix of each name component.")),
]

# What the OpenAPI schema says DICOMweb answers: PS3.18's media types for what succeeds, the API's JSON
# error body (core.schema adds 400, 401, 403 and 404 to every operation) for what does not.
DICOM_ATTRIBUTE = {
    "type": "object", "required": ["vr"],
    "description": "One attribute: its VR and its values, or a BulkDataURI to fetch them from.",
    "properties": {"vr": {"type": "string", "example": "UI"}, "Value": {"type": "array", "items": {}},
                   "BulkDataURI": {"type": "string", "format": "uri"}, "InlineBinary": {"type": "string"}},
}
DICOM_DATASET = {"type": "object", "additionalProperties": DICOM_ATTRIBUTE,
                 "description": "A DICOM JSON dataset (PS3.18 F.2): attributes keyed by their tag, eight hex digits."}
DICOM_DATASETS = {"type": "array", "items": DICOM_DATASET}
MULTIPART_DICOM = 'multipart/related; type="application/dicom"'
MULTIPART_OCTETS = 'multipart/related; type="application/octet-stream"'
ERROR_REF = {"$ref": "#/components/schemas/Error"}
NOT_ACCEPTABLE = {406: OpenApiResponse(ERROR_REF, description="The Accept header admits nothing offered here.")}
QIDO_RESPONSES = {(200, DICOM_JSON): OpenApiResponse(DICOM_DATASETS, description=(
    "The matches, possibly none. Query keys it cannot match on are ignored and named in a Warning header."))}
STOW_RESPONSES = {
    (200, DICOM_JSON): OpenApiResponse(DICOM_DATASET, description=(
        "All stored: (0008,1199) ReferencedSOPSequence lists each instance and its retrieve URL; a duplicate "
        "carries warning 0111 in (0008,1196).")),
    (202, DICOM_JSON): OpenApiResponse(DICOM_DATASET, description=(
        "Some stored, some refused: (0008,1198) FailedSOPSequence lists the refused ones, each with its "
        "failure reason (0008,1197) and radqueue's explanation in (0009,1001).")),
    (409, DICOM_JSON): OpenApiResponse(DICOM_DATASET, description="None stored: FailedSOPSequence says why."),
    415: OpenApiResponse(ERROR_REF, description=f'The body is not {MULTIPART_DICOM}.'),
}
STOW_REQUEST = {MULTIPART_DICOM: OpenApiTypes.BINARY}


class StudiesView(DicomwebView):
    """QIDO-RS search for studies (GET) and STOW-RS store (POST, ``?project=ID``)."""

    @extend_schema(
        summary="QIDO-RS: search for studies", operation_id="qido_search_studies",
        parameters=[*QIDO_PARAMS, OpenApiParameter("PatientID", str), OpenApiParameter("PatientName", str),
                    OpenApiParameter("StudyDate", str, description="YYYYMMDD or YYYYMMDD-YYYYMMDD"),
                    OpenApiParameter("ModalitiesInStudy", str), OpenApiParameter("StudyInstanceUID", str)],
        responses=QIDO_RESPONSES,
    )
    def get(self, request):
        self.audit_verb = "list"
        matches, unsupported = _query_params(request)
        qs = self.scope.studies().order_by("id")
        for keyword, value in matches.items():
            if keyword == "PatientName":
                qs = _match_person_name(qs, "patient_pseudonym", value,
                                        fuzzy=_fuzzy(request.query_params.get("fuzzymatching", "")))
            elif keyword == "PatientID":
                qs = _match(qs, "patient_pseudonym", value)
            elif keyword == "StudyDate":
                qs = _date_range(qs, "study_date", value)
            elif keyword == "StudyInstanceUID":
                qs = qs.filter(study_uid__in=_uid_list(value))
            elif keyword == "StudyDescription":
                qs = _match(qs, "description", value)
            elif keyword == "ModalitiesInStudy":
                wanted = _uid_list(value)
                condition = Q()
                for modality in wanted:
                    condition |= Q(modalities__icontains=f'"{modality.upper()}"')
                qs = qs.filter(condition)
            elif keyword == "AccessionNumber":
                if value not in ("", "*"):
                    qs = qs.none()  # accession numbers are removed by de-identification
            else:
                unsupported.append(keyword)
        base, included = _base_url(request), _included(request)
        return _qido_response([_shaped(study_json(s, base), STUDY_DEFAULT, included) for s in _paged(request, qs)],
                              unsupported, included[2])

    @extend_schema(
        summary="STOW-RS: store instances", operation_id="stow_store_instances",
        request=STOW_REQUEST,
        parameters=[OpenApiParameter("project", int, description="Target project (optional when the caller can "
                                                                    "ingest into exactly one).")],
        responses=STOW_RESPONSES,
    )
    def post(self, request, study=None):
        return (self.scope.store or store_instances)(self, request, study)


def _stow_project(request):
    project_id = request.query_params.get("project")
    if project_id:
        return get_project_for(request.user, project_id, Perm.INGEST)
    projects = list(projects_visible_to(request.user, Perm.INGEST)[:2])
    if len(projects) != 1:
        raise DicomwebError("Name the target project with ?project=ID.", code="project_required")
    return projects[0]


FAILURE_PROCESSING = 0x0110
FAILURE_STUDY_MISMATCH = 0xA900
WARNING_DUPLICATE = 0x0111


def stow_parts(request) -> list:
    """A STOW-RS body's parts, each spooled encrypted (core.dicom.stow); 415 or 400 saying what is wrong."""
    try:
        return parse_stow_body(request._request, request.META.get("CONTENT_TYPE", ""),
                               max_part_bytes=settings.RADQUEUE_MAX_FILE_BYTES)
    except StowError as exc:
        status = 415 if "multipart/related" in str(exc) or "type=" in str(exc) else 400
        raise DomainError(str(exc), code="bad_stow_request", status=status) from None


def stow_attr(vr: str, *values) -> dict:
    """One attribute of a STOW-RS response body (DICOM JSON)."""
    return _attr(vr, *values)


def store_instances(view: DicomwebView, request, study_uid: str | None) -> HttpResponse:
    view.audit_verb = "ingest"
    project = _stow_project(request)
    view._audit_project_id = project.pk
    parts = stow_parts(request)
    items = [IngestItem(name=f"part {i + 1}", reader=p.spool.reader() if p.spool else None, size=p.size,
                        reason=p.reason) for i, p in enumerate(parts)]
    # The URL may name the study by its original UID (de-identified on the way in) or by ours.
    report = ingest_files(project, items, by=request.user, source="stow",
                          only_study_uids={study_uid} if study_uid else None)
    base = _base_url(request)
    referenced, failed = [], []
    for item in report.files:
        if item.status == "rejected":
            code = FAILURE_STUDY_MISMATCH if item.code == "study_mismatch" else FAILURE_PROCESSING
            # The reason travels in a private element so clients see why (PS3.18 allows extra attributes).
            failed.append({"00081150": _attr("UI", item.sop_class_uid), "00081155": _attr("UI", item.sop_instance_uid),
                           "00081197": _attr("US", code), "00090010": _attr("LO", "RADQUEUE"),
                           "00091001": _attr("LT", f"{item.name}: {item.reason}")})
            continue
        entry = {"00081150": _attr("UI", item.sop_class_uid), "00081155": _attr("UI", item.sop_instance_uid),
                 "00081190": _attr("UR", f"{base}/studies/{item.study_uid}/series/{item.series_uid}/instances/"
                                         f"{item.sop_instance_uid}")}
        if item.status == "duplicate":
            entry["00081196"] = _attr("US", WARNING_DUPLICATE)
        referenced.append(entry)
    body = {"00081190": _attr("UR", f"{base}/studies/{study_uid}" if study_uid else f"{base}/studies")}
    body["00081199"] = {"vr": "SQ", "Value": referenced} if referenced else {"vr": "SQ"}
    if failed:
        body["00081198"] = {"vr": "SQ", "Value": failed}
    status = 200 if not failed else (202 if referenced else 409)
    return JsonResponse(body, status=status, content_type=DICOM_JSON)


class SeriesSearchView(DicomwebView):
    @extend_schema(summary="QIDO-RS: search for series of a study", operation_id="qido_search_series",
                   parameters=[*QIDO_PARAMS, OpenApiParameter("Modality", str),
                               OpenApiParameter("SeriesInstanceUID", str), OpenApiParameter("SeriesNumber", int)],
                   responses=QIDO_RESPONSES)
    def get(self, request, study):
        self.audit_verb = "list"
        study_obj = self.study(study)
        matches, unsupported = _query_params(request)
        qs = self.scope.series(study_obj).select_related("study").order_by("number", "id")
        for keyword, value in matches.items():
            if keyword == "Modality":
                qs = qs.filter(modality__in=_uid_list(value.upper()))
            elif keyword == "SeriesInstanceUID":
                qs = qs.filter(series_uid__in=_uid_list(value))
            elif keyword == "SeriesNumber":
                qs = qs.filter(number=value) if value.lstrip("-").isdigit() else qs.none()
            elif keyword == "SeriesDescription":
                qs = _match(qs, "description", value)
            elif keyword == "BodyPartExamined":
                qs = _match(qs, "body_part", value)
            elif keyword != "StudyInstanceUID":
                unsupported.append(keyword)
        base, included = _base_url(request), _included(request)
        study_attrs = study_json(study_obj, base)
        return _qido_response([_shaped({**study_attrs, **self.series_attrs(s, base)}, SERIES_DEFAULT, included)
                               for s in _paged(request, qs)], unsupported, included[2])


class InstanceSearchView(DicomwebView):
    @extend_schema(summary="QIDO-RS: search for instances of a series", operation_id="qido_search_instances",
                   parameters=[*QIDO_PARAMS, OpenApiParameter("SOPInstanceUID", str),
                               OpenApiParameter("InstanceNumber", int)],
                   responses=QIDO_RESPONSES)
    def get(self, request, study, series):
        self.audit_verb = "list"
        series_obj = self.series_of(self.study(study), series)
        matches, unsupported = _query_params(request)
        qs = self.instances().filter(series=series_obj).order_by("instance_number", "id")
        for keyword, value in matches.items():
            if keyword == "SOPInstanceUID":
                qs = qs.filter(sop_instance_uid__in=_uid_list(value))
            elif keyword == "SOPClassUID":
                qs = qs.filter(sop_class_uid__in=_uid_list(value))
            elif keyword == "InstanceNumber":
                qs = qs.filter(instance_number=value) if value.lstrip("-").isdigit() else qs.none()
            elif keyword not in ("StudyInstanceUID", "SeriesInstanceUID"):
                unsupported.append(keyword)
        base, included = _base_url(request), _included(request)
        higher = {**study_json(series_obj.study, base), **self.series_attrs(series_obj, base)}
        return _qido_response([_shaped({**higher, **instance_json(i, base)}, INSTANCE_DEFAULT, included)
                               for i in _paged(request, qs)], unsupported, included[2])


# --- WADO-RS ---------------------------------------------------------------------------------

def _accept_header(request) -> str:
    # PS3.18 8.3.3.1: an ``accept`` query parameter stands for the header (a browser's <img> cannot
    # set one: OHIF's thumbnailDirect asks ``.../thumbnail?accept=image/jpeg``).
    return request.query_params.get("accept") or request.META.get("HTTP_ACCEPT", "")


def multipart_related(parts: Iterable[tuple[str, str, bytes]], media: str) -> StreamingHttpResponse:
    """A ``multipart/related; type="<media>"`` response (PS3.18 8.7.1.2) streamed from ``(content
    type, content location, bytes)`` parts: each part's Content-Type carries its own parameters
    (``transfer-syntax=``), the message's ``type`` names the parts' media type."""
    boundary = secrets.token_hex(16)

    def body() -> Iterator[bytes]:
        for content_type, content_location, data in parts:
            yield (f"--{boundary}\r\nContent-Type: {content_type}\r\n"
                   f"Content-Location: {content_location}\r\n\r\n").encode()
            yield data
            yield b"\r\n"
        yield f"--{boundary}--\r\n".encode()

    return StreamingHttpResponse(body(), content_type=f'multipart/related; type="{media}"; boundary={boundary}')


def _instance_bytes(instance: Instance) -> bytes:
    # Objects ingested before preambles were zeroed may still hold what the sender put there.
    return zero_preamble(get_store().read_bytes(instance.storage_name))


def instance_url(base: str, instance: Instance) -> str:
    series = instance.series
    return f"{base}/studies/{series.study.study_uid}/series/{series.series_uid}/instances/{instance.sop_instance_uid}"


def _dicom_parts(instances: Iterable[Instance], base: str) -> Iterator[tuple[str, str, bytes]]:
    for instance in instances:
        yield (f"application/dicom; transfer-syntax={instance.transfer_syntax_uid}", instance_url(base, instance),
               _instance_bytes(instance))


class RetrieveMixin:
    def retrieve(self, request, instances: QuerySet[Instance]) -> StreamingHttpResponse:
        """The instances as stored, one application/dicom part each; 406, before anything is sent,
        when the Accept header does not admit the stored syntax of every one of them."""
        self.audit_verb = "download"
        header = _accept_header(request)
        stored = instances.order_by().values_list("transfer_syntax_uid", flat=True).distinct()
        if not negotiation.admits(header, "application/dicom") or any(
                negotiation.instance_encoding(header, syntax) is None for syntax in stored):
            raise NotAcceptable('Instances are offered as multipart/related; type="application/dicom" in the '
                                "transfer syntax they are stored in (transfer-syntax=* admits it).")
        base = _base_url(request)
        return multipart_related(_dicom_parts(instances.order_by("instance_number", "id").iterator(), base),
                                 "application/dicom")

    def metadata(self, request, instances: QuerySet[Instance]) -> HttpResponse:
        self.audit_verb = "view"
        # From what ingest recorded (core.dicom.metadata), not from the stored objects.
        body = metadata.metadata_body(instances, _base_url(request))
        if not self.scope.describes_series:
            return HttpResponse(body, content_type=DICOM_JSON)
        saved = Series.objects.filter(pk__in=instances.values("series_id"), is_reader_object=True)
        described = {s.series_uid: d for s in saved if (d := self.scope.series_description(s)) is not None}
        if not described:
            return HttpResponse(body, content_type=DICOM_JSON)
        # An adjudication's root names each read's saved series by its reader's pseudonym (as its QIDO does).
        items = json.loads(body)
        for item in items:
            uid = (item.get("0020000E", {}).get("Value") or [None])[0]
            if uid in described:
                item["0008103E"] = _attr("LO", described[uid])
        return JsonResponse(items, safe=False, content_type=DICOM_JSON)


WADO_RESPONSES = {(200, MULTIPART_DICOM): OpenApiResponse(OpenApiTypes.BINARY, description=(
    "One application/dicom part per instance (DICOM Part 10 files), each with its Content-Location.")),
                  **NOT_ACCEPTABLE}
META_RESPONSES = {(200, DICOM_JSON): OpenApiResponse(DICOM_DATASETS, description=(
    "Each instance's attributes; large values and the pixel data by BulkDataURI (bulk and frames)."))}


class StudyRetrieveView(RetrieveMixin, DicomwebView):
    @extend_schema(summary="WADO-RS: retrieve a study", operation_id="wado_retrieve_study", responses=WADO_RESPONSES)
    def get(self, request, study):
        return self.retrieve(request, self.instances().filter(series__study=self.study(study)))

    @extend_schema(summary="STOW-RS: store instances of one study (its original or de-identified UID)",
                   operation_id="stow_store_study_instances",
                   request=STOW_REQUEST, parameters=[OpenApiParameter("project", int)],
                   responses=STOW_RESPONSES)
    def post(self, request, study):
        return (self.scope.store or store_instances)(self, request, study)


class StudyMetadataView(RetrieveMixin, DicomwebView):
    @extend_schema(summary="WADO-RS: study metadata", responses=META_RESPONSES)
    def get(self, request, study):
        return self.metadata(request, self.instances().filter(series__study=self.study(study)))


class SeriesRetrieveView(RetrieveMixin, DicomwebView):
    @extend_schema(summary="WADO-RS: retrieve a series", operation_id="wado_retrieve_series", responses=WADO_RESPONSES)
    def get(self, request, study, series):
        return self.retrieve(request, self.instances().filter(series=self.series_of(self.study(study), series)))


class SeriesMetadataView(RetrieveMixin, DicomwebView):
    @extend_schema(summary="WADO-RS: series metadata", responses=META_RESPONSES)
    def get(self, request, study, series):
        return self.metadata(request, self.instances().filter(series=self.series_of(self.study(study), series)))


class InstanceRetrieveView(RetrieveMixin, DicomwebView):
    @extend_schema(summary="WADO-RS: retrieve an instance", operation_id="wado_retrieve_instance",
                   responses=WADO_RESPONSES)
    def get(self, request, study, series, instance):
        series_obj = self.series_of(self.study(study), series)
        return self.retrieve(request, self.instances().filter(pk=self.instance_of(series_obj, instance).pk))


class InstanceMetadataView(RetrieveMixin, DicomwebView):
    @extend_schema(summary="WADO-RS: instance metadata", responses=META_RESPONSES)
    def get(self, request, study, series, instance):
        series_obj = self.series_of(self.study(study), series)
        return self.metadata(request, self.instances().filter(pk=self.instance_of(series_obj, instance).pk))


def _load(instance: Instance) -> pydicom.Dataset:
    with get_store().open(instance.storage_name) as reader:
        return pydicom.dcmread(io.BytesIO(reader.read()))


def _frame_numbers(text: str, count: int) -> list[int]:
    try:
        numbers = [int(n) for n in text.split(",") if n.strip()]
    except ValueError:
        raise DicomwebError("frame numbers are whole numbers separated by commas", code="bad_frames") from None
    if not numbers or any(n < 1 or n > count for n in numbers):
        raise DicomwebError(f"frame numbers must lie in 1..{count}", code="bad_frames", status=404)
    return numbers


def native_frames(ds: pydicom.Dataset, numbers: list[int]) -> list[bytes]:
    """Uncompressed little-endian bytes of the given 1-based frames (decoding compressed syntaxes)."""
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    if not ds.file_meta.TransferSyntaxUID.is_compressed and ds.file_meta.TransferSyntaxUID.is_little_endian:
        # The frame size the pixel module describes, not the data's length over the frame count:
        # ingest accepts trailing padding shorter than a frame, which would shift every boundary.
        bits = int(ds.Rows) * int(ds.Columns) * int(ds.get("SamplesPerPixel", 1) or 1) * int(ds.BitsAllocated)
        size = bits // 8 if bits % 8 == 0 else len(ds.PixelData) // frames
        return [bytes(ds.PixelData[(n - 1) * size:n * size]) for n in numbers]
    array = ds.pixel_array
    if frames == 1:
        array = array[np.newaxis]
    return [np.ascontiguousarray(array[n - 1]).astype(array.dtype.newbyteorder("<")).tobytes() for n in numbers]


def stored_frames(instance: Instance, numbers: list[int]) -> list[bytes]:
    """native_frames of the stored instance. Uncompressed little-endian pixel data is read by range:
    the header up to the pixel data element, then each frame's bytes (only the object's chunks they
    lie in are decrypted), so a frame of a multi-gigabyte instance costs its own size, not the
    object's. Any other pixel data is decoded from the whole object. Where ingest recorded the
    frames' positions (core.dicom.metadata) the header is not parsed either."""
    if (recorded := metadata.frames_by_layout(instance, numbers, encapsulated=False)) is not None:
        return recorded
    with get_store().open(instance.storage_name) as reader:
        part = part10.read(reader)
        ds, pixels = part.ds, part.pixels
        syntax = ds.file_meta.get("TransferSyntaxUID")
        if (part.streamed and pixels is not None and pixels.tag == part10.PIXEL_DATA and not pixels.encapsulated
                and syntax is not None and not syntax.is_compressed and syntax.is_little_endian):
            frames = int(ds.get("NumberOfFrames", 1) or 1)
            bits = int(ds.Rows) * int(ds.Columns) * int(ds.get("SamplesPerPixel", 1) or 1) * int(ds.BitsAllocated)
            # As native_frames splits them: at the size the pixel module describes (validation
            # guarantees that many bytes), not the value's length over the frame count.
            size = bits // 8
            if bits % 8 == 0 and frames * size <= pixels.value_length:
                out = []
                for n in numbers:
                    reader.seek(pixels.value_start + (n - 1) * size)
                    out.append(reader.read(size))
                return out
    return native_frames(_load(instance), numbers)


def encoded_frames(instance: Instance, numbers: list[int]) -> list[bytes]:
    """The given 1-based frames of encapsulated (compressed) pixel data as stored, undecoded: each
    frame's fragments joined (PS3.5 A.4), found by the Basic or Extended Offset Table or, without
    either, by walking the item headers. Only those items are read (and their chunks decrypted),
    not the whole pixel data, nor the dataset decoded; by the positions ingest recorded, where it
    did, without parsing the header."""
    if (recorded := metadata.frames_by_layout(instance, numbers, encapsulated=True)) is not None:
        return recorded
    with get_store().open(instance.storage_name) as reader:
        part = part10.read(reader)
        ds, pixels = part.ds, part.pixels
        count = int(ds.get("NumberOfFrames", 1) or 1)
        offsets = None
        if "ExtendedOffsetTable" in ds and "ExtendedOffsetTableLengths" in ds:
            offsets = (ds.ExtendedOffsetTable, ds.ExtendedOffsetTableLengths)
        if part.streamed and pixels is not None and pixels.tag == part10.PIXEL_DATA and pixels.encapsulated:
            out = []
            for n in numbers:
                reader.seek(pixels.value_start)  # get_frame reads from where the offset table starts
                out.append(get_frame(reader, n - 1, number_of_frames=count, extended_offsets=offsets))
            return out
    value = _load(instance).PixelData
    return [get_frame(value, n - 1, number_of_frames=count, extended_offsets=offsets) for n in numbers]


FRAMES_DESCRIPTION = (
    "One part per frame asked for, in the order asked, each Content-Type naming its transfer syntax "
    "(`application/octet-stream; transfer-syntax=1.2.840.10008.1.2.1` for native little-endian bytes). "
    "Compressed pixel data comes as stored when the Accept header admits it (`transfer-syntax=*`, the stored "
    "syntax named, or its media type such as `image/jp2`), else decoded to explicit VR little endian.")


class FramesView(DicomwebView):
    @extend_schema(summary="WADO-RS: frames",
                   responses={(200, MULTIPART_OCTETS): OpenApiResponse(OpenApiTypes.BINARY,
                                                                        description=FRAMES_DESCRIPTION),
                              **NOT_ACCEPTABLE})
    def get(self, request, study, series, instance, frames):
        self.audit_verb = "download"
        obj = self.instance_at(study, series, instance)
        if not obj.rows:
            raise NotFound("This instance has no pixel data.")
        header = _accept_header(request)
        encoding = negotiation.frame_encoding(header, obj.transfer_syntax_uid)
        refusal = NotAcceptable('Frames are offered as multipart/related; type="application/octet-stream" '
                                f"(transfer-syntax={negotiation.EXPLICIT_VR_LITTLE_ENDIAN}, or * for the stored "
                                f"{obj.transfer_syntax_uid}).")
        if encoding is None:
            raise refusal
        media, syntax = encoding
        numbers = _frame_numbers(frames, obj.frames)
        data = None
        if syntax == obj.transfer_syntax_uid and syntax in negotiation.COMPRESSED_MEDIA:
            try:
                data = encoded_frames(obj, numbers)
            except ValueError:
                # Several fragments a frame and no offset table: the frames cannot be told apart
                # undecoded (PS3.5 A.4), so they are sent decoded where the header admits that.
                encoding = negotiation.frame_encoding(header, negotiation.EXPLICIT_VR_LITTLE_ENDIAN)
                if encoding is None:
                    raise refusal from None
                media, syntax = encoding
        if data is None:
            data = stored_frames(obj, numbers)
        url, content_type = public_url(request, request.path_info), f"{media}; transfer-syntax={syntax}"
        return multipart_related(((content_type, f"{url}#{n}", d) for n, d in zip(numbers, data, strict=True)), media)


class BulkDataView(DicomwebView):
    @extend_schema(summary="WADO-RS: bulk data of one attribute",
                   responses={(200, MULTIPART_OCTETS): OpenApiResponse(OpenApiTypes.BINARY, description=(
                       "One application/octet-stream part: the attribute's value."))})
    def get(self, request, study, series, instance, tag):
        self.audit_verb = "download"
        obj = self.instance_at(study, series, instance)
        ds = _load(obj)
        try:
            elem = ds[int(tag, 16)]
        except (KeyError, ValueError):
            raise NotFound("No such attribute.") from None
        value = elem.value if isinstance(elem.value, bytes) else str(elem.value).encode()
        return multipart_related([(negotiation.OCTET_STREAM, public_url(request, request.path_info), value)],
                                 negotiation.OCTET_STREAM)


def render_jpeg(ds: pydicom.Dataset, *, frame: int = 1, size: int | None = None, window=None) -> bytes:
    """An 8-bit JPEG of one frame: rescaled, windowed (DICOM window or min-max), MONOCHROME1 inverted."""
    from PIL import Image
    from pydicom.pixels import apply_modality_lut

    array = ds.pixel_array
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    if frames > 1:
        array = array[frame - 1]
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2"))
    if array.ndim == 3 and array.shape[-1] == 3:
        image = Image.fromarray(array.astype(np.uint8), mode="RGB")
    else:
        values = apply_modality_lut(array, ds).astype(np.float32)
        if window is None and "WindowCenter" in ds and "WindowWidth" in ds:
            center, width = ds.WindowCenter, ds.WindowWidth
            center = float(center[0] if isinstance(center, pydicom.multival.MultiValue) else center)
            width = float(width[0] if isinstance(width, pydicom.multival.MultiValue) else width)
            window = (center, width)
        if window is not None:
            low, high = window[0] - window[1] / 2, window[0] + window[1] / 2
        else:
            low, high = float(values.min()), float(values.max())
        scaled = np.clip((values - low) / max(high - low, 1e-6), 0, 1) * 255
        if photometric == "MONOCHROME1":
            scaled = 255 - scaled
        image = Image.fromarray(scaled.astype(np.uint8), mode="L")
    if size:
        image.thumbnail((size, size))
    out = io.BytesIO()
    image.save(out, format="JPEG", quality=90)
    return out.getvalue()


def _rendered(request, instance: Instance | None, *, size: int | None) -> HttpResponse:
    """One frame of ``instance`` as image/jpeg, by the request's window and viewport parameters."""
    if not negotiation.admits(_accept_header(request), "image/jpeg"):
        raise NotAcceptable("Rendered images are offered as image/jpeg.")
    if instance is None or not instance.rows:
        raise NotFound("No pixel data to render here.")
    window = None
    if "window" in request.query_params:
        try:
            center, width = (float(v) for v in request.query_params["window"].split(",")[:2])
            window = (center, width)
        except ValueError:
            raise DicomwebError("window is center,width", code="bad_query") from None
    if "viewport" in request.query_params:
        try:
            size = max(int(v) for v in request.query_params["viewport"].split(",")[:2])
        except ValueError:
            raise DicomwebError("viewport is width,height", code="bad_query") from None
    return HttpResponse(render_jpeg(_load(instance), size=size, window=window), content_type="image/jpeg")


THUMBNAIL_SIZE = 128
RENDER_PARAMS = [OpenApiParameter("window", str, description="center,width"),
                 OpenApiParameter("viewport", str, description="width,height"),
                 OpenApiParameter("accept", str, description="Stands for the Accept header (PS3.18 8.3.3.1).")]
JPEG_RESPONSE = {(200, "image/jpeg"): OpenApiResponse(OpenApiTypes.BINARY, description=(
    "The first frame as an 8-bit JPEG, windowed (a thumbnail: at most 128 pixels a side unless a viewport "
    "is given).")), **NOT_ACCEPTABLE}


class RenderedView(DicomwebView):
    @extend_schema(summary="WADO-RS: rendered instance (image/jpeg)", parameters=RENDER_PARAMS,
                   responses=JPEG_RESPONSE)
    def get(self, request, study, series, instance):
        self.audit_verb = "download"
        obj = self.instance_at(study, series, instance)
        return _rendered(request, obj, size=None)


class ThumbnailView(DicomwebView):
    @extend_schema(summary="WADO-RS: instance thumbnail (image/jpeg)", parameters=RENDER_PARAMS,
                   responses=JPEG_RESPONSE)
    def get(self, request, study, series, instance):
        self.audit_verb = "download"
        obj = self.instance_at(study, series, instance)
        return _rendered(request, obj, size=THUMBNAIL_SIZE)


def representative_image(instances: QuerySet[Instance]) -> Instance | None:
    """The image a series' or study's thumbnail shows: the middle one, by series then instance
    number, of the first series that has images (a CT's first and last slices are often a scout or
    an edge of the volume)."""
    images = instances.filter(rows__isnull=False)
    first = images.order_by("series__number", "series_id").values_list("series_id", flat=True).first()
    if first is None:
        return None
    in_series = images.filter(series_id=first).order_by("instance_number", "id")
    return in_series[in_series.count() // 2]


class SeriesThumbnailView(DicomwebView):
    @extend_schema(summary="WADO-RS: series thumbnail (image/jpeg)", parameters=RENDER_PARAMS,
                   responses=JPEG_RESPONSE)
    def get(self, request, study, series):
        self.audit_verb = "download"
        series_obj = self.series_of(self.study(study), series)
        return _rendered(request, representative_image(self.instances().filter(series=series_obj)),
                         size=THUMBNAIL_SIZE)


class StudyThumbnailView(DicomwebView):
    @extend_schema(summary="WADO-RS: study thumbnail (image/jpeg)", parameters=RENDER_PARAMS,
                   responses=JPEG_RESPONSE)
    def get(self, request, study):
        self.audit_verb = "download"
        study_obj = self.study(study)
        return _rendered(request, representative_image(self.instances().filter(series__study=study_obj)),
                         size=THUMBNAIL_SIZE)
