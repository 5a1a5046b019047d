"""Browser automation in Cube sandboxes, with the unmodified E2B SDK and Playwright.

    make template-browser                 # once: the `browser` template (examples/browser/template.py)
    eval "$(make -s env)"
    .venv/bin/python examples/browser/screenshot.py --out page.png

1. A web sandbox (the default template) serves a page, its stylesheet and an image with
   ``python3 -m http.server 8000``.
2. A browser sandbox (template `browser`) starts with headless Chromium already running: the
   template was snapshotted with it up. It is created private: ``allow_public_traffic=False``, so its
   CDP port answers only to its traffic access token (whoever reaches CDP owns the browser), with
   ``mask_request_host="localhost:${PORT}"`` (Chromium serves CDP only to a localhost Host, whatever
   the sandbox domain is), and without internet access.
3. Playwright on this host connects to that Chromium over CDP through Cube's proxy
   (``wss://9222-<id>.<domain>/devtools/browser/<id>`` with the token header) and opens the web
   sandbox's URL in a new context.
4. Sandboxes cannot reach each other, nor the node whose proxy serves their URLs (CubeVS drops it),
   so the page's requests are bridged by this host: ``page.route`` intercepts them and
   ``route.fetch()`` (which Playwright runs here, not in the browser) fetches each through the proxy
   from the web sandbox. Every byte the browser renders still comes from the web sandbox.
5. The screenshot is saved, and checked: the title is the page's, and the page's background is
   the colour only its stylesheet sets.

``--inside`` also runs Playwright inside the browser sandbox (the template has it for the guest's
python3): a script there connects to the same Chromium on loopback, renders a page written into the
sandbox and screenshots it; the file comes back with ``files.read``.

The last stdout line is one JSON object (title, sizes, checks, timings). Exit status 0 when every
check passed. Both sandboxes are killed whatever happens.
"""
from __future__ import annotations

import argparse
import atexit
import io
import json
import os
import secrets
import ssl
import sys
import tempfile
import time
from pathlib import Path
from urllib.parse import urlsplit

import httpx
from e2b import Sandbox
from PIL import Image
from playwright.sync_api import Route, sync_playwright

CDP_PORT = 9222
WEB_PORT = 8000
TOKEN_HEADER = "e2b-traffic-access-token"
BACKGROUND = (18, 52, 86)  # set only by the page's stylesheet
SITE = "/home/user/site"

PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>{title}</title><link rel="stylesheet" href="style.css"></head>
<body><h1>{title}</h1><p>Served by sandbox {sandbox}, rendered by sandbox {browser}.</p>
<img src="dot.svg" width="64" height="64" alt="dot"></body></html>
"""
STYLE = "html, body {{ background: rgb{bg}; color: white; font-family: sans-serif; margin: 0; padding: 1em; }}\n"
DOT = ('<svg xmlns="http://www.w3.org/2000/svg" width="64" height="64">'
       '<circle cx="32" cy="32" r="30" fill="orange"/></svg>')

INSIDE = """
import sys
from playwright.sync_api import sync_playwright
with sync_playwright() as p:
    browser = p.chromium.connect_over_cdp("http://127.0.0.1:9223")
    context = browser.new_context(viewport={"width": 640, "height": 360})
    page = context.new_page()
    page.goto("file:///home/user/inside.html")
    page.screenshot(path="/home/user/inside.png")
    print(page.title())
    context.close()
"""


def _tls() -> ssl.SSLContext:
    cafile = os.environ.get("SSL_CERT_FILE")
    return ssl.create_default_context(cafile=cafile) if cafile else ssl.create_default_context()


def _trust_cube_ca_in_node() -> None:
    """Playwright's driver is Node, which trusts extra CAs only through NODE_EXTRA_CA_CERTS: make
    that include SSL_CERT_FILE (the node's CA, as `make env` exports both), keeping what it held."""
    cube, extra = os.environ.get("SSL_CERT_FILE"), os.environ.get("NODE_EXTRA_CA_CERTS")
    if not cube or cube == extra:
        return
    if not extra or not os.path.isfile(extra):
        os.environ["NODE_EXTRA_CA_CERTS"] = cube
        return
    fd, bundle = tempfile.mkstemp(prefix="cube-ca-", suffix=".pem")
    with os.fdopen(fd, "wb") as f:
        f.write(Path(extra).read_bytes() + b"\n" + Path(cube).read_bytes())
    atexit.register(os.unlink, bundle)
    os.environ["NODE_EXTRA_CA_CERTS"] = bundle


def _wait_http(url: str, headers: dict[str, str], timeout: float) -> httpx.Response:
    deadline = time.monotonic() + timeout
    last = "no answer"
    while time.monotonic() < deadline:
        try:
            r = httpx.get(url, headers=headers, verify=_tls(), timeout=10)
            if r.status_code == 200:
                return r
            last = f"{r.status_code} {r.text[:200]}"
        except httpx.HTTPError as e:
            last = repr(e)
        time.sleep(0.3)
    raise RuntimeError(f"{url} did not answer 200 within {timeout:g}s: {last}")


def _background_and_size(png: bytes) -> tuple[tuple[int, int, int], tuple[int, int]]:
    """The colour near the bottom-left corner (the page's background) and the image's size."""
    with Image.open(io.BytesIO(png)) as im:
        pixel = im.convert("RGB").getpixel((2, im.height - 3))
        size = im.size
    assert isinstance(pixel, tuple), pixel  # an RGB image's pixel is a triple
    return (int(pixel[0]), int(pixel[1]), int(pixel[2])), size


def start_web(template: str | None, timeout: int, metadata: dict[str, str]) -> tuple[Sandbox, str, str]:
    """The web sandbox (its server is started later); returns it, its page URL and the page's title."""
    web = Sandbox.create(template, timeout=timeout, metadata=metadata)  # None: the SDK's default
    return web, f"https://{web.get_host(WEB_PORT)}/", f"Cube page {secrets.token_hex(4)}"


def run(args: argparse.Namespace) -> dict:
    _trust_cube_ca_in_node()
    ms: dict[str, int] = {}
    t0 = time.monotonic()
    metadata = dict(kv.split("=", 1) for kv in args.metadata)
    web, page_url, title = start_web(args.web_template, args.sandbox_timeout, metadata)
    browser_sbx = None
    try:
        browser_sbx = Sandbox.create(args.template, timeout=args.sandbox_timeout, metadata=metadata,
                                     allow_internet_access=False,
                                     network={"allow_public_traffic": False, "mask_request_host": "localhost:${PORT}"})
        ms["create_both"] = int((time.monotonic() - t0) * 1000)
        token = browser_sbx.traffic_access_token or ""
        web.files.write(f"{SITE}/index.html", PAGE.format(title=title, sandbox=web.sandbox_id,
                                                          browser=browser_sbx.sandbox_id))
        web.files.write(f"{SITE}/style.css", STYLE.format(bg=BACKGROUND))
        web.files.write(f"{SITE}/dot.svg", DOT)
        web.commands.run(f"python3 -m http.server {WEB_PORT} --bind 0.0.0.0 --directory {SITE}", background=True)
        _wait_http(page_url, {}, 60)

        t1 = time.monotonic()
        cdp_host = browser_sbx.get_host(CDP_PORT)
        version = _wait_http(f"https://{cdp_host}/json/version", {TOKEN_HEADER: token}, 60).json()
        ws_url = f"wss://{cdp_host}{urlsplit(version['webSocketDebuggerUrl']).path}"
        fetched: list[str] = []

        def bridge(route: Route) -> None:
            fetched.append(urlsplit(route.request.url).path)
            route.fulfill(response=route.fetch())

        with sync_playwright() as p:
            browser = p.chromium.connect_over_cdp(ws_url, headers={TOKEN_HEADER: token}, timeout=60_000)
            ms["connect"] = int((time.monotonic() - t1) * 1000)
            context = browser.new_context(viewport={"width": 800, "height": 450})
            page = context.new_page()
            page.set_default_timeout(120_000)
            page.route(f"{page_url}**", bridge)
            t2 = time.monotonic()
            page.goto(page_url, wait_until="load")
            ms["goto"] = int((time.monotonic() - t2) * 1000)
            t3 = time.monotonic()
            png = page.screenshot(path=args.out, full_page=False)
            ms["screenshot"] = int((time.monotonic() - t3) * 1000)
            rendered_title = page.title()
            user_agent = page.evaluate("navigator.userAgent")
            context.close()
            browser.close()  # over CDP this disconnects; the sandbox's Chromium runs on

        background, size = _background_and_size(png)
        report = {
            "title": rendered_title, "expected_title": title, "screenshot": str(Path(args.out).resolve()),
            "screenshot_bytes": len(png), "size": list(size), "background": list(background),
            "browser": version.get("Browser"), "user_agent": user_agent, "fetched": sorted(set(fetched)),
            "web_sandbox": web.sandbox_id, "browser_sandbox": browser_sbx.sandbox_id,
        }
        checks = {
            "title": rendered_title == title,
            "background": all(abs(a - b) <= 2 for a, b in zip(background, BACKGROUND, strict=True)),
            "subresources_from_web_sandbox": {"/", "/style.css", "/dot.svg"} <= set(fetched),
            "cdp_refused_without_token": httpx.get(f"https://{cdp_host}/json/version", verify=_tls(),
                                                   timeout=10).status_code == 401,
        }
        if args.inside:
            t4 = time.monotonic()
            inside_title = f"Inside {secrets.token_hex(4)}"
            browser_sbx.files.write("/home/user/inside.html", PAGE.format(title=inside_title, sandbox="(none)",
                                                                          browser=browser_sbx.sandbox_id))
            browser_sbx.files.write("/home/user/inside.py", INSIDE)
            out = browser_sbx.commands.run("python3 /home/user/inside.py", timeout=300)
            inside_png = bytes(browser_sbx.files.read("/home/user/inside.png", format="bytes"))
            ms["inside"] = int((time.monotonic() - t4) * 1000)
            with Image.open(io.BytesIO(inside_png)) as im:
                report["inside"] = {"title": out.stdout.strip(), "size": list(im.size), "bytes": len(inside_png)}
                checks["inside"] = out.stdout.strip() == inside_title and im.size == (640, 360)
        report["checks"] = checks
        report["ok"] = all(checks.values())
        report["ms"] = ms
        return report
    finally:
        for sbx in (browser_sbx, web):
            if sbx is not None:
                try:
                    sbx.kill()
                except Exception as e:  # noqa: BLE001 - report, and go on killing the other
                    print(f"could not kill {sbx.sandbox_id}: {e!r}", file=sys.stderr)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="page.png", help="where the screenshot goes (PNG)")
    ap.add_argument("--template", default="browser", help="the browser template (id or alias)")
    ap.add_argument("--web-template", default=None, help="the web sandbox's template (default: the SDK's)")
    ap.add_argument("--inside", action="store_true", help="also run Playwright inside the browser sandbox")
    ap.add_argument("--metadata", action="append", default=[], metavar="K=V",
                    help="metadata on both sandboxes; repeatable")
    ap.add_argument("--sandbox-timeout", type=int, default=600, help="the sandboxes' lifetime, seconds")
    report = run(ap.parse_args())
    print(json.dumps(report))
    sys.exit(0 if report["ok"] else 1)


if __name__ == "__main__":
    main()
