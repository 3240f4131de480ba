"""A private Orthanc (Debian's orthanc + orthanc-dicomweb) on loopback, for tests and benchmarks."""

import json
import os
import shutil
import socket
import subprocess
import tempfile
import time
import urllib.request
from contextlib import contextmanager
from pathlib import Path

ORTHANC = shutil.which("Orthanc") or "/usr/sbin/Orthanc"
DICOMWEB_PLUGIN = Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so")


def unavailable_reason() -> str:
    """'' when Orthanc with its DICOMweb plugin can be started here, else why not."""
    if not Path(ORTHANC).exists():
        return "Orthanc is not installed (Debian packages orthanc, orthanc-dicomweb)"
    if not DICOMWEB_PLUGIN.exists():
        return "the Orthanc DICOMweb plugin is not installed (Debian package orthanc-dicomweb)"
    return ""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def running_orthanc(timeout: float = 30.0):
    """Start Orthanc bound to 127.0.0.1 in a throw-away folder; yield its base URL."""
    with running_orthanc_process(timeout) as (url, _process):
        yield url


def cpu_seconds(process: subprocess.Popen) -> float:
    """User plus system CPU time the running Orthanc process has used so far (Linux /proc)."""
    fields = Path(f"/proc/{process.pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@contextmanager
def running_orthanc_process(timeout: float = 30.0):
    """running_orthanc, yielding (base URL, the Orthanc process)."""
    reason = unavailable_reason()
    if reason:
        raise RuntimeError(reason)
    with tempfile.TemporaryDirectory(prefix="orthanc-") as folder:
        port = _free_port()
        config = {
            "Name": "radqueue-peer", "HttpPort": port, "DicomPort": _free_port(), "DicomServerEnabled": False,
            "StorageDirectory": f"{folder}/db", "IndexDirectory": f"{folder}/db", "RemoteAccessAllowed": False,
            "AuthenticationEnabled": False, "HttpBindAddress": "127.0.0.1",
            "Plugins": [str(DICOMWEB_PLUGIN)], "DicomWeb": {"Enable": True, "Root": "/dicom-web/"},
            "StorageCompression": False, "OverwriteInstances": False,
        }
        config_path = Path(folder) / "orthanc.json"
        config_path.write_text(json.dumps(config))
        process = subprocess.Popen([ORTHANC, str(config_path)], stdout=subprocess.DEVNULL,
                                   stderr=subprocess.DEVNULL)
        url = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + timeout
            while True:
                try:
                    with urllib.request.urlopen(f"{url}/system", timeout=1):
                        break
                except OSError:
                    if process.poll() is not None or time.monotonic() > deadline:
                        raise RuntimeError("Orthanc did not start") from None
                    time.sleep(0.2)
            yield url, process
        finally:
            process.terminate()
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()


def upload(url: str, data: bytes) -> dict:
    """Orthanc's REST ingest of one DICOM file (POST /instances)."""
    request = urllib.request.Request(f"{url}/instances", data=data, method="POST",
                                     headers={"Content-Type": "application/dicom"})
    with urllib.request.urlopen(request, timeout=60) as response:
        return json.loads(response.read())
