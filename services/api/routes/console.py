"""The web console: one HTML page and its script and stylesheet, served by the API on its own port.

Invariants:
- The page holds no data. It is served without a key (auth.py lists these paths as public); every
  figure it shows comes from the REST API the SDK uses, called by the page's script with the key
  the user typed (kept in sessionStorage, sent as ``X-API-KEY``; never in a URL or a cookie).
- Only the files in ``ASSETS`` are served, read once from ``services/api/console/`` (shipped with
  the package, no build step, nothing fetched from a network): a name outside that set is a 404,
  so no path a client sends reaches the filesystem.
- Every console response carries a strict Content-Security-Policy: scripts, styles and calls from
  this origin only, no inline script or style, no frames, forms or plugins. The script writes what
  the API returns into the DOM as text only (``textContent``), never as markup.
- The paths (``/console`` and ``/console/assets/...``) are none of E2B's, so the SDK's routes and
  the console's cannot collide.
"""

from __future__ import annotations

from pathlib import Path

from sanic import Blueprint, response

from services.api.errors import ApiError

bp = Blueprint("console")

PAGE_PATH = "/console"
ASSETS_PREFIX = "/console/assets/"
STATIC_DIR = Path(__file__).resolve().parents[1] / "console"
ASSETS = {"console.js": "text/javascript; charset=utf-8", "console.css": "text/css; charset=utf-8",
          # Named by the page, so the browser never asks for /favicon.ico (an API path: 401 without a key).
          "favicon.svg": "image/svg+xml"}

CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self'; "
       "base-uri 'none'; form-action 'none'; frame-ancestors 'none'")
HEADERS = {"Content-Security-Policy": CSP, "X-Content-Type-Options": "nosniff", "X-Frame-Options": "DENY",
           "Referrer-Policy": "no-referrer",
           # Small files, and a new release must show at once: revalidate every time.
           "Cache-Control": "no-cache"}


def _read(name: str) -> bytes:
    return (STATIC_DIR / name).read_bytes()


# Read at import: a missing file fails the API's start, not a user's page load.
_FILES = {name: _read(name) for name in ("index.html", *ASSETS)}


def is_public(path: str) -> bool:
    """The console's paths, which carry no data and need no key (auth.py)."""
    return path == PAGE_PATH or path.startswith(ASSETS_PREFIX)


@bp.get(PAGE_PATH)
async def page(request):
    return response.raw(_FILES["index.html"], content_type="text/html; charset=utf-8", headers=HEADERS)


@bp.get(ASSETS_PREFIX + "<name>")
async def asset(request, name: str):
    if name not in ASSETS:
        raise ApiError(404, f"no console asset '{name[:100]}'")
    return response.raw(_FILES[name], content_type=ASSETS[name], headers=HEADERS)
