"""The OHIF viewer radqueue serves from its own origin (/viewer/): where the build is, how its files
are served, and the ``app-config.js`` made for one read. No views here (tasks.viewer has them).

The build is npm's ``@ohif/app`` (deploy/fetch_ohif.sh fetches it, checks its integrity and rebases
it from the site root, which the npm build assumes, to MOUNT). Its file names carry a content hash
(``1180.bundle.762993518ea30ae3.js``, ``0ddf166f7a343eda.wasm``): those may be cached for a year;
everything else (index.html, app-config.js, assets/) must be revalidated.

A read's viewer lives under ``/viewer/reads/{read}/``: OHIF's router base is that prefix, its one
data source is the read's own DICOMweb root (tasks.dicomweb_scopes), and it authenticates with the
reader's session cookie, which a same-origin XHR or fetch sends by itself: no token is written into
the page, the config or a URL, where any script in the page, the history or a Referer could see it.
"""

from __future__ import annotations

import json
import mimetypes
import re
from dataclasses import dataclass
from pathlib import Path

from django.conf import settings

from core.models import LabelEntry

MOUNT = "/viewer/"
VERSION = "3.13.2"
INSTALL_HINT = "make ohif  (or deploy/fetch_ohif.sh): fetches @ohif/app {version} from the npm registry into {dir}"

# webpack's hash in a file name: the file never changes under that name.
_HASHED = re.compile(r"(^|\.)[0-9a-f]{16,}\.[A-Za-z0-9]+$")
IMMUTABLE = "public, max-age=31536000, immutable"
REVALIDATE = "no-cache"
NEVER_STORE = "no-store"

# Python's table has most; these are the ones a browser refuses to use under another type
# (WebAssembly.instantiateStreaming needs application/wasm, module workers a JavaScript type).
_TYPES = {".js": "text/javascript", ".mjs": "text/javascript", ".wasm": "application/wasm",
          ".json": "application/json", ".map": "application/json", ".css": "text/css",
          ".svg": "image/svg+xml", ".woff2": "font/woff2", ".html": "text/html"}

# Label kinds OHIF draws with its measurement tools (longitudinal mode, saved as SR) and with its
# segmentation tools (saved as SEG).
MEASUREMENT_KINDS = {LabelEntry.Kind.MEASUREMENT, LabelEntry.Kind.BBOX, LabelEntry.Kind.POLYGON,
                     LabelEntry.Kind.LANDMARK}
SEGMENTATION_KINDS = {LabelEntry.Kind.MASK}
MEASUREMENT_MODE, SEGMENTATION_MODE = "viewer", "segmentation"  # the modes' route names in OHIF 3.13


def ohif_dir() -> Path:
    return Path(getattr(settings, "OHIF_DIR", None) or settings.BASE_DIR / "var" / "ohif")


def dist_dir() -> Path | None:
    """The build's dist/ when it is installed (it has index.html), else None."""
    dist = ohif_dir() / "dist"
    return dist if (dist / "index.html").is_file() else None


def install_hint() -> str:
    return INSTALL_HINT.format(version=VERSION, dir=ohif_dir())


@dataclass(frozen=True)
class Asset:
    path: Path
    content_type: str
    cache_control: str


def find_asset(dist: Path, relative: str) -> Asset | None:
    """The file ``relative`` names inside dist, or None (not there, a folder, or outside dist:
    ``..`` and symlinks out of the build are refused, not followed)."""
    if not relative or relative.endswith("/") or "\x00" in relative:
        return None
    root = dist.resolve()
    try:
        path = (root / relative).resolve()
        path.relative_to(root)
    except (ValueError, OSError):
        return None
    if not path.is_file():
        return None
    suffix = path.suffix.lower()
    content_type = _TYPES.get(suffix) or mimetypes.guess_type(path.name)[0] or "application/octet-stream"
    if content_type.startswith("text/") or content_type in ("application/json", "image/svg+xml"):
        content_type += "; charset=utf-8"
    return Asset(path, content_type, IMMUTABLE if _HASHED.search(path.name) else REVALIDATE)


class BuildNotRebased(Exception):
    """index.html does not load its config from MOUNT: a build deploy/fetch_ohif.sh did not prepare."""


def index_html(dist: Path, *, config_url: str | None = None) -> str:
    """OHIF's index.html; with ``config_url``, loading that app-config.js instead of the build's."""
    html = (dist / "index.html").read_text(encoding="utf-8")
    stock = f'src="{MOUNT}app-config.js"'
    if stock not in html:
        raise BuildNotRebased(f"{dist / 'index.html'} does not load {MOUNT}app-config.js")
    return html.replace(stock, f'src="{config_url}"') if config_url else html


def modes_for(kinds) -> list[str]:
    """OHIF modes a protocol with these label kinds needs, the one to open first leading.

    Measurement-type labels open the longitudinal (measurement tracking) mode, which also carries
    OHIF's segmentation panel; a protocol of masks alone opens the segmentation mode; one with only
    classifications and grades opens the measurement mode too (it is OHIF's plain viewer).
    """
    kinds = set(kinds)
    modes = []
    if kinds & MEASUREMENT_KINDS or not kinds & SEGMENTATION_KINDS:
        modes.append(MEASUREMENT_MODE)
    if kinds & SEGMENTATION_KINDS:
        modes.append(SEGMENTATION_MODE)
    return modes


def read_prefix(read_id: int) -> str:
    return f"{MOUNT}reads/{read_id}/"


def open_url(read_id: int, study_uid: str, mode: str) -> str:
    """Where a read's viewer opens: the study in the mode, under the read's router base."""
    return f"{read_prefix(read_id)}{mode}?StudyInstanceUIDs={study_uid}"


def app_config(*, read_id: int, dicomweb_root: str, modes: list[str], study_uid: str) -> dict:
    """OHIF 3.13's window.config for one read: one DICOMweb data source, the read's root."""
    return {
        "name": f"radqueue read {read_id}",
        "routerBasename": read_prefix(read_id).rstrip("/"),
        "showStudyList": False,
        "investigationalUseDialog": {"option": "never"},
        "extensions": [],
        "modes": [],  # the build's own modes all load; the read opens modes[0] (open_url)
        # OHIF's first-visit tour covers the viewport; a reader's workstation is not a demo.
        "customizationService": {"global": {"ohif.tours": {"$set": []}}},
        "showWarningMessageForCrossOrigin": False,  # same origin
        "showCPUFallbackMessage": True,
        "showLoadingIndicator": True,
        "strictZSpacingForVolumeViewport": True,
        "maxNumberOfWebWorkers": 3,
        "maxNumRequests": {"interaction": 100, "thumbnail": 5, "prefetch": 25},
        "showErrorDetails": "production",
        "defaultDataSourceName": "radqueue",
        "dataSources": [{
            "namespace": "@ohif/extension-default.dataSourcesModule.dicomweb",
            "sourceName": "radqueue",
            "configuration": {
                "friendlyName": "radqueue",
                "name": "radqueue",
                "wadoUriRoot": dicomweb_root,
                "qidoRoot": dicomweb_root,
                "wadoRoot": dicomweb_root,
                "stowRoot": dicomweb_root,
                "qidoSupportsIncludeField": True,
                "imageRendering": "wadors",
                "thumbnailRendering": "wadors",
                "enableStudyLazyLoad": True,
                "supportsFuzzyMatching": True,  # core.dicom.dicomweb: fuzzymatching on person names
                "supportsWildcard": True,
                "supportsReject": False,
                "staticWado": False,
                "singlepart": "bulkdata,video",
                "bulkDataURI": {"enabled": True},
                "omitQuotationForMultipartRequest": True,
                "dicomUploadEnabled": False,
            },
        }],
        # Not OHIF's: what radqueue's own pages (the read page) read from the same object.
        "radqueue": {"read": read_id, "study": study_uid, "modes": modes},
    }


def _js(value) -> str:
    # JSON is a JavaScript expression; "</" is escaped so the text is safe inside a <script> too.
    return json.dumps(value, indent=2).replace("</", "<\\/")


# OHIF's DICOMweb client sends no CSRF header, so Django refuses its session-authenticated STOW
# (the SEG and SR it saves). This adds the header from Django's CSRF cookie, as Django's own AJAX
# recipe does, to unsafe XHR and fetch requests whose URL is under the read's root on this origin,
# and to nothing else: the token never goes to another site, nor to another radqueue URL. After a
# save it tells the read page (the parent frame, same origin only) to reload what was saved.
CSRF_GUARD = """(function (root, read, cookieName, header) {
  var safe = /^(GET|HEAD|OPTIONS|TRACE)$/i;
  function guarded(method, url) {
    if (safe.test(method || "GET")) return false;
    var target;
    try { target = new URL(url, location.href); } catch (e) { return false; }
    return target.origin === location.origin && target.href.indexOf(root) === 0;
  }
  function cookieValue() {
    var parts = document.cookie ? document.cookie.split(";") : [];
    for (var i = 0; i < parts.length; i++) {
      var pair = parts[i].trim().split("=");
      if (pair[0] === cookieName) return decodeURIComponent(pair.slice(1).join("="));
    }
    return "";
  }
  function saved(status) {
    if (status >= 200 && status < 300 && window.parent !== window)
      window.parent.postMessage({radqueue: "saved", read: read}, location.origin);
  }
  var open = XMLHttpRequest.prototype.open, send = XMLHttpRequest.prototype.send;
  XMLHttpRequest.prototype.open = function (method, url) {
    this.__radqueueGuarded = guarded(String(method), String(url));
    return open.apply(this, arguments);
  };
  XMLHttpRequest.prototype.send = function () {
    if (this.__radqueueGuarded) {
      var xhr = this;
      this.setRequestHeader(header, cookieValue());
      this.addEventListener("loadend", function () { saved(xhr.status); });
    }
    return send.apply(this, arguments);
  };
  var fetch = window.fetch;
  if (fetch) window.fetch = function (input, init) {
    var isRequest = typeof Request !== "undefined" && input instanceof Request;
    var method = (init && init.method) || (isRequest ? input.method : "GET");
    if (!guarded(method, isRequest ? input.url : String(input))) return fetch.apply(this, arguments);
    var headers = new Headers((init && init.headers) || (isRequest ? input.headers : undefined));
    headers.set(header, cookieValue());
    return fetch.call(this, input, Object.assign({}, init, {headers: headers})).then(function (response) {
      saved(response.status);
      return response;
    });
  };
})(%s, %s, %s, %s);
"""


def app_config_js(config: dict) -> str:
    """The config script: OHIF's window.config, after the CSRF guard for the read's DICOMweb root."""
    root, read = config["dataSources"][0]["configuration"]["stowRoot"], config["radqueue"]["read"]
    guard = CSRF_GUARD % (_js(root.rstrip("/") + "/"), _js(read), _js(settings.CSRF_COOKIE_NAME),
                          _js(csrf_header_name()))
    return guard + "window.config = " + _js(config) + ";\n"


def csrf_header_name() -> str:
    """The header Django reads the CSRF token from (CSRF_HEADER_NAME is its WSGI META key)."""
    name = settings.CSRF_HEADER_NAME
    return name.removeprefix("HTTP_").replace("_", "-")
