"""De-identification throughput: radqueue's against dicognito's, on pydicom's test files.

    .venv/bin/python bench/deid_compare.py [--quick]      (5 rounds; --quick: 3)

Each file is de-identified from bytes in memory to bytes in memory, each tool as it runs: radqueue
as ingest does (core.dicom.part10 reads up to the pixel data, core.dicom.deid de-identifies, the
file is written with every untouched element and the pixel data copied as read), dicognito as its
``Anonymizer().anonymize(ds)`` on a ``pydicom.dcmread`` dataset written back with ``save_as``. A
plain ``dcmread`` + ``save_as`` round (no de-identification) is measured too, for scale. The runs
alternate round by round (A B C, C B A, ...) and the median of each one's rounds is reported.
Files that either tool refuses, or that pydicom cannot write back untouched, are left out of all.
Prints one JSON line. dicognito is a bench/test-only dependency.
"""

import argparse
import io
import json
import statistics
import sys
import time
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import pydicom  # noqa: E402

from core.dicom import part10  # noqa: E402
from core.dicom.deid import deidentify_dataset  # noqa: E402

SECRET = b"radqueue-bench-secret"


def test_files() -> list[Path]:
    """pydicom's test files (and pydicom-data's, when installed) that read and write back untouched."""
    from pydicom.data.data_manager import DATA_ROOT, external_data_sources

    # get_testdata_files("*.dcm") without its download step: offline, each missing file costs a
    # failed request, and the files it would fetch are the external source's anyway.
    names = [str(p) for p in (Path(DATA_ROOT) / "test_files").glob("*.dcm")]
    for source in external_data_sources().values():
        names.extend(source.get_paths("*.dcm"))
    usable = []
    theirs = _dicognito()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for name in sorted(set(names)):
            path = Path(name)
            payload = path.read_bytes()
            try:
                _write(pydicom.dcmread(io.BytesIO(payload)))
                _ours(payload)  # ingest refuses what fails here (no SOP Instance UID, truncated pixels)
                theirs(payload)
            except Exception:
                continue
            usable.append(path)
    return usable


def _write(ds) -> bytes:
    buffer = io.BytesIO()
    ds.save_as(buffer)
    return buffer.getvalue()


def _ours(payload: bytes) -> bytes:
    """As ingest de-identifies (core.dicom.prepare without its validation and index metadata)."""
    part = part10.read(io.BytesIO(payload))
    part.remember()
    deidentify_dataset(part.ds, secret=SECRET)
    out = io.BytesIO()
    part.write(out)
    return out.getvalue()


def _dicognito():
    from dicognito.anonymizer import Anonymizer

    anonymizer = Anonymizer()

    def theirs(payload: bytes) -> bytes:
        ds = pydicom.dcmread(io.BytesIO(payload))
        anonymizer.anonymize(ds)
        return _write(ds)

    return theirs


def _read_write_only(payload: bytes) -> None:
    _write(pydicom.dcmread(io.BytesIO(payload)))


def _round(run, payloads: list[bytes]) -> float:
    started = time.perf_counter()
    for payload in payloads:
        run(payload)
    return time.perf_counter() - started


def measure(files: list[Path], rounds: int) -> dict:
    """Files per second for bytes in, de-identified bytes out, ours and dicognito's: the median of
    ``rounds`` alternating rounds of each."""
    payloads = [Path(f).read_bytes() for f in files]
    runs = {"deid": _ours, "dicognito": _dicognito(), "read_write": _read_write_only}
    rates: dict[str, list[float]] = {name: [] for name in runs}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for run in runs.values():
            _round(run, payloads[:10])  # warm caches and imports
        for index in range(rounds):
            order = list(runs) if index % 2 == 0 else list(reversed(runs))
            for name in order:
                rates[name].append(len(payloads) / _round(runs[name], payloads))
    median = {name: statistics.median(values) for name, values in rates.items()}
    return {
        "files": len(payloads),
        "rounds": rounds,
        "deid_files_per_s": round(median["deid"], 1),
        "dicognito_files_per_s": round(median["dicognito"], 1),
        "read_write_only_files_per_s": round(median["read_write"], 1),
        "speedup_vs_dicognito": round(median["deid"] / median["dicognito"], 2),
        "deid_rounds": [round(r, 1) for r in rates["deid"]],
        "dicognito_rounds": [round(r, 1) for r in rates["dicognito"]],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="three rounds instead of five")
    args = parser.parse_args()
    files = test_files()
    print(json.dumps({"bench": "deid_compare", **measure(files, rounds=3 if args.quick else 5)}))


if __name__ == "__main__":
    main()
