"""Code contexts: one kernel each, with isolated state. Default contexts (one per language) are
what /execute uses when the client names no context."""

from __future__ import annotations

import asyncio
import logging
import uuid
from dataclasses import dataclass, field

from .. import users
from ..identity import Identity
from .kernels import DENO_LANGUAGES, Kernel, KernelLaunch, KernelStartError, Language, LanguageUnavailable

log = logging.getLogger("envd.contexts")

# Jupyter's inline backend makes matplotlib figures come back as image/png display data.
KERNEL_ENV = {"MPLBACKEND": "module://matplotlib_inline.backend_inline", "PYTHONUNBUFFERED": "1"}


# Default kernels held in reserve: started (and warmed) with the others, so a template snapshot has
# them running and a first cell in these languages pays no kernel start, but stopped (SIGSTOP)
# while idle until a user's first cell in them, and caught up with the sandbox's identity only
# then: a sandbox that never runs TypeScript, R, Java or bash cells pays neither their idle
# wake-ups nor their catch-up after a create (bash_kernel's silent cells cost ~100 ms each).
RESERVE_LANGUAGES = (Language.TYPESCRIPT, Language.R, Language.JAVA, Language.BASH)


class ContextNotFound(LookupError):
    pass


@dataclass
class Context:
    id: str
    language: Language
    cwd: str
    user: users.User
    kernel: Kernel | None = None
    # Serialises executions: a kernel runs one cell at a time and its iopub stream is shared.
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    ready: asyncio.Future | None = None
    env_generation: int = -1
    # The identity's reseed_generation this kernel's RNGs are known fresh for (execute.py).
    seed_generation: int = -1
    # Set once a Python kernel's one-time set-up ran (execute.catch_up): from then on it applies the
    # identity itself before each cell (identity_hook.py) and has E2B's result formats (e2b_formats.py).
    identity_hook: bool = False
    # Set once this kernel process ran its language's prelude (snippets.py).
    prelude_done: bool = False
    is_default: bool = False
    # Set once a user's cell ran here (not the agent's warm-up or empty cells): a reserve kernel is
    # stopped between cells only until then (RESERVE_LANGUAGES).
    used: bool = False
    # Set once an execution told its caller that this context's current kernel died.
    death_reported: bool = False

    @property
    def in_reserve(self) -> bool:
        return self.is_default and not self.used and self.language in RESERVE_LANGUAGES

    def to_json(self) -> dict:
        return {"id": self.id, "language": self.language.value, "cwd": self.cwd}


class ContextRegistry:
    def __init__(self, identity: Identity, launch: KernelLaunch) -> None:
        self.identity = identity
        self.launch = launch
        self._contexts: dict[str, Context] = {}
        self._defaults: dict[Language, str] = {}
        self._default_lock = asyncio.Lock()
        self._missing: dict[Language, str | None] = {}

    def check_available(self, language: Language) -> None:
        """Raises LanguageUnavailable if the root cannot run this language's kernel (looked up
        once: a template's root does not change under a running agent)."""
        if language not in self._missing:
            self._missing[language] = self.launch.missing(language)
        what = self._missing[language]
        if what is not None:
            raise LanguageUnavailable(f"language '{language.value}' is not available in this sandbox's "
                                      f"template (it has no {what})")

    def available_languages(self) -> list[Language]:
        out = []
        for language in Language:
            try:
                self.check_available(language)
            except LanguageUnavailable:
                continue
            out.append(language)
        return out

    def _new(self, language: Language, cwd: str | None, is_default: bool) -> Context:
        user = users.lookup(self.identity.default_user)
        ctx = Context(
            id=str(uuid.uuid4()),
            language=language,
            cwd=cwd or self.identity.default_workdir or user.home,
            user=user,
            is_default=is_default,
        )
        self._contexts[ctx.id] = ctx
        ctx.ready = asyncio.ensure_future(self._start_kernel(ctx))
        # A failed start is reported to whoever waits for the context; never "unretrieved".
        ctx.ready.add_done_callback(lambda f: f.cancelled() or f.exception())
        return ctx

    async def _start_kernel(self, ctx: Context) -> None:
        env = self.identity.process_env(ctx.user)
        env.update(KERNEL_ENV)
        if ctx.language in DENO_LANGUAGES:
            env["NO_COLOR"] = "1"  # results and errors as plain text, not terminal colours
        kernel = Kernel(ctx.language, self.launch, ctx.user, ctx.cwd, env)
        # A new process has the sandbox's env vars in its environment, except Java's, whose env
        # vars are system properties (snippets.py): its first catch-up sets them.
        ctx.env_generation = self.identity.generation if ctx.language is not Language.JAVA else -1
        ctx.seed_generation = self.identity.reseed_generation
        ctx.identity_hook = False  # a new kernel process: the next catch-up installs it
        ctx.prelude_done = False
        ctx.death_reported = False
        await kernel.start()
        if ctx.in_reserve:
            kernel.freeze()
        ctx.kernel = kernel

    async def create(self, language: Language, cwd: str | None) -> Context:
        self.check_available(language)
        ctx = self._new(language, cwd, is_default=False)
        try:
            await self.wait_ready(ctx)
        except KernelStartError:
            self._contexts.pop(ctx.id, None)
            raise
        return ctx

    def start_defaults(self, languages: list[Language]) -> None:
        for lang in languages:
            self._defaults[lang] = self._new(lang, None, is_default=True).id

    async def default(self, language: Language) -> Context:
        self.check_available(language)
        async with self._default_lock:
            cid = self._defaults.get(language)
            ctx = self._contexts.get(cid) if cid else None
            if ctx is None:
                ctx = self._new(language, None, is_default=True)
                self._defaults[language] = ctx.id
        return ctx

    async def wait_ready(self, ctx: Context) -> int | None:
        """Waits for the context's kernel, starting a new one if it died or never started. Returns
        the exit status of a kernel found dead whose death no execution has reported yet (it died
        between cells), so that the caller says so; None otherwise."""
        assert ctx.ready is not None
        try:
            await asyncio.shield(ctx.ready)
        except KernelStartError:
            # Try once more: the cause may have been transient (e.g. the root was still busy).
            if ctx.kernel is None and ctx.ready.done():
                ctx.ready = asyncio.ensure_future(self._start_kernel(ctx))
                ctx.ready.add_done_callback(lambda f: f.cancelled() or f.exception())
                await asyncio.shield(ctx.ready)
            else:
                raise
        if ctx.kernel is None or not ctx.kernel.alive():
            unreported = None if ctx.kernel is None or ctx.death_reported else ctx.kernel.exit_status()
            await self.restart(ctx)
            return unreported
        return None

    def get(self, cid: str) -> Context:
        ctx = self._contexts.get(cid)
        if ctx is None:
            raise ContextNotFound(cid)
        return ctx

    def list(self) -> list[Context]:
        return list(self._contexts.values())

    async def restart(self, ctx: Context) -> None:
        old = ctx.kernel
        ctx.kernel = None
        if old is not None:
            await old.stop()
        ctx.ready = asyncio.ensure_future(self._start_kernel(ctx))
        ctx.ready.add_done_callback(lambda f: f.cancelled() or f.exception())
        await asyncio.shield(ctx.ready)

    async def remove(self, cid: str) -> None:
        ctx = self.get(cid)
        del self._contexts[cid]
        for lang, d in list(self._defaults.items()):
            if d == cid:
                del self._defaults[lang]
        if ctx.ready is not None and not ctx.ready.done():
            ctx.ready.cancel()
        if ctx.kernel is not None:
            await ctx.kernel.stop()

    async def shutdown(self) -> None:
        for cid in list(self._contexts):
            try:
                await self.remove(cid)
            except Exception:
                log.exception("context shutdown failed", extra={"context": cid})
