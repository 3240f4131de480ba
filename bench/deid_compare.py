"""De-identification throughput: core.dicom.deid against dicognito on pydicom's test files.

    .venv/bin/python bench/deid_compare.py [--quick]

Each file is read from memory, de-identified and written to a BytesIO, by our module and by
dicognito's ``Anonymizer().anonymize(ds)``, in alternating rounds so both see the same machine
state. Files that pydicom cannot read and write back untouched are left out of both. Prints one
JSON line. dicognito is a bench/test-only dependency.
"""

import argparse
import io
import json
import sys
import time
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import pydicom  # noqa: E402

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
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for name in sorted(set(names)):
            path = Path(name)
            try:
                _write(pydicom.dcmread(io.BytesIO(path.read_bytes())))
            except Exception:
                continue
            usable.append(path)
    return usable


def _write(ds) -> bytes:
    buffer = io.BytesIO()
    ds.save_as(buffer)
    return buffer.getvalue()


def _ours(payload: bytes) -> None:
    ds = pydicom.dcmread(io.BytesIO(payload))
    deidentify_dataset(ds, secret=SECRET)
    _write(ds)


def _read_write_only(payload: bytes) -> None:
    _write(pydicom.dcmread(io.BytesIO(payload)))


def _round(run, payloads: list[bytes]) -> tuple[float, int]:
    errors = 0
    started = time.perf_counter()
    for payload in payloads:
        try:
            run(payload)
        except Exception:
            errors += 1
    return time.perf_counter() - started, errors


def measure(files: list[Path], rounds: int) -> dict:
    """Files per second for read + de-identify + write, ours and dicognito's, over rounds alternating runs."""
    from dicognito.anonymizer import Anonymizer

    anonymizer = Anonymizer()

    def theirs(payload: bytes) -> None:
        ds = pydicom.dcmread(io.BytesIO(payload))
        anonymizer.anonymize(ds)
        _write(ds)

    payloads = [Path(f).read_bytes() for f in files]
    runs = {"deid": _ours, "dicognito": theirs, "read_write": _read_write_only}
    seconds = dict.fromkeys(runs, 0.0)
    errors = dict.fromkeys(runs, 0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for run in runs.values():
            _round(run, payloads[:5])  # warm caches and imports
        for index in range(rounds):
            order = list(runs) if index % 2 == 0 else list(reversed(runs))
            for name in order:
                elapsed, failed = _round(runs[name], payloads)
                seconds[name] += elapsed
                errors[name] += failed
    done = len(payloads) * rounds
    result = {
        "files": len(payloads),
        "rounds": rounds,
        "deid_files_per_s": round(done / seconds["deid"], 1),
        "dicognito_files_per_s": round(done / seconds["dicognito"], 1),
        "read_write_only_files_per_s": round(done / seconds["read_write"], 1),
        "deid_errors": errors["deid"],
        "dicognito_errors": errors["dicognito"],
    }
    result["speedup_vs_dicognito"] = round(result["deid_files_per_s"] / result["dicognito_files_per_s"], 2)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="one round instead of five")
    args = parser.parse_args()
    files = test_files()
    print(json.dumps({"bench": "deid_compare", **measure(files, rounds=1 if args.quick else 5)}))


if __name__ == "__main__":
    main()
