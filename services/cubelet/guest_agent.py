"""How a sandbox runs the guest agent (services/envd), what it is built from, and how to tell it is
fully up.

The agent runs from the guest base image (`ServiceRoot.BASE`): Debian's python3 there, its PyPI
dependencies under /opt/cube/site and its code under /opt/cube/app (vmm_core/guest/base_image.py).
It enters the sandbox root the guest init composed at /run/cube/root and starts its kernels with
the template's own python3. Its stdout/stderr are the guest console (the init wires them there), so
its JSON log lines end up in the machine's console.log.
"""
from __future__ import annotations

import asyncio
import json
import time

import httpx

from cube_common.envd import ENVD_PORT, INTERPRETER_PORT
from services.envd.bundle import agent_bundle
from vmm_core import AgentPackage, GuestAgent, GuestService, ServiceRoot

SANDBOX_ROOT = "/run/cube/root"  # where the guest init mounts template + writable layer
BASE_PYTHON = "/usr/bin/python3"  # the base image's interpreter
BASE_PYTHONPATH = "/opt/cube/app:/opt/cube/site"
# Every language of the default template's code interpreter (what its snapshot has running).
ALL_LANGUAGES = ("python", "javascript", "typescript", "r", "java", "bash")


def cube_agent() -> GuestAgent:
    """Cube's agent as the base image's input: the packages, requirements and lock envd describes
    itself with (services/envd/bundle.py). Everything that builds guest artifacts takes it from here."""
    b = agent_bundle()
    return GuestAgent(tuple(AgentPackage(name, source) for name, source in b.packages), b.requirements,
                      b.constraints)


def agent_service(*, kernel_python: str = "/usr/bin/python3", default_user: str = "user",
                  interpreter: bool = True, log_level: str = "INFO") -> GuestService:
    """The guest init's service entry for the agent.

    `kernel_python` is the python *inside the template root* that has ipykernel; templates without
    one should pass `interpreter=False` (then only the envd port is served)."""
    argv = [BASE_PYTHON, "-m", "services.envd", "--root", SANDBOX_ROOT,
            "--envd-port", str(ENVD_PORT), "--interpreter-port", str(INTERPRETER_PORT),
            "--kernel-python", kernel_python, "--default-user", default_user, "--log-level", log_level]
    if not interpreter:
        argv.append("--no-interpreter")
    return GuestService(
        name="envd",
        argv=tuple(argv),
        root=ServiceRoot.BASE,
        env={
            "PYTHONPATH": BASE_PYTHONPATH,
            # The base image is read-only erofs: no bytecode can be written there anyway.
            "PYTHONDONTWRITEBYTECODE": "1",
            # Log lines reach the console as they happen, not when a buffer fills.
            "PYTHONUNBUFFERED": "1",
        },
        restart=True,
    )


class AgentNotReady(RuntimeError):
    pass


async def wait_default_kernels(client: httpx.AsyncClient, interpreter_url: str, *, timeout: float = 300.0,
                               languages: tuple[str, ...] | None = None,
                               access_token: str | None = None) -> tuple[str, ...]:
    """Until the default context of each language executes a cell; returns the languages.

    `interpreter_url` is the agent's code-interpreter base URL (port 49999), reachable through
    `client`. The agent starts its default kernels (python and javascript, where the root has
    them; its --no-default-contexts is off) before its port opens, so its first context list
    names them all; `languages` (instead) may name others, whose empty cell starts them. Kernels
    start in the background, so /health answers long before they run; an empty cell waits for
    the kernel without running anything and without counting as an execution (IPython skips
    empty cells). A template snapshot is taken once they all run, so that clones do not each
    start them."""
    deadline = time.monotonic() + timeout
    headers = {"X-Access-Token": access_token} if access_token else {}
    if languages is None:
        languages = await _default_languages(client, interpreter_url, headers, deadline, timeout)
    for language in languages:
        while True:
            try:
                await _run_empty_cell(client, interpreter_url, language, headers,
                                      max(1.0, deadline - time.monotonic()))
                break
            except (httpx.HTTPError, AgentNotReady) as e:
                if time.monotonic() > deadline:
                    raise AgentNotReady(f"the default {language} kernel did not come up within {timeout:.0f}s: "
                                        f"{e!r}") from e
                await asyncio.sleep(0.5)
    return languages


async def _default_languages(client: httpx.AsyncClient, base: str, headers: dict[str, str], deadline: float,
                             timeout: float) -> tuple[str, ...]:
    while True:
        try:
            r = await client.get(f"{base.rstrip('/')}/contexts", headers=headers, timeout=10.0)
            if r.status_code == 200:
                return tuple(dict.fromkeys(str(c["language"]) for c in r.json()))
            err = f"HTTP {r.status_code}"
        except (httpx.HTTPError, ValueError, KeyError, TypeError) as e:
            err = repr(e)
        if time.monotonic() > deadline:
            raise AgentNotReady(f"the agent did not list its contexts within {timeout:.0f}s: {err}")
        await asyncio.sleep(0.5)


async def _run_empty_cell(client: httpx.AsyncClient, base: str, language: str, headers: dict[str, str],
                          timeout: float) -> None:
    async with client.stream("POST", f"{base.rstrip('/')}/execute", json={"code": "", "language": language},
                             headers=headers, timeout=timeout) as r:
        if r.status_code == 400:  # an unknown language, or one the root cannot run: waiting will not help
            raise RuntimeError(f"the agent refused {language}: {(await r.aread()).decode(errors='replace')[:300]}")
        if r.status_code != 200:
            raise AgentNotReady(f"HTTP {r.status_code}: {(await r.aread()).decode(errors='replace')[:300]}")
        async for line in r.aiter_lines():
            if not line.strip():
                continue
            msg = json.loads(line)
            if msg.get("type") == "error":
                raise AgentNotReady(f"{msg.get('name')}: {msg.get('value')}")
            if msg.get("type") == "end_of_execution":
                return
    raise AgentNotReady("the execution stream ended without end_of_execution")
