"""The bookkeeping code the agent runs silently inside kernels, per language: env vars for one
execution (set, then restore), the sandbox's env vars after an /init, fresh RNG state in a new
clone, and each kernel's one-time prelude.

Invariants:
- Every value reaches a kernel as a string literal of that language made by a JSON encoder
  (which escapes quotes, backslashes and control characters in a form the language reads) and
  every name is backquoted or quoted where the language allows it; names are already checked
  against `ENV_NAME` by the caller. Nothing from a client is ever spliced in unquoted.
- Snippets leave no name the user would see: they live in a block, a local scope or under a
  `__cube` name that the language's own listing hides where it can.
- The languages' env semantics are E2B's: Python, JavaScript/TypeScript, R and bash set the
  process environment (`os.environ`, `process.env`, `Sys.setenv`, `export`); Java's JVM cannot
  change its own environment, so env vars are system properties there (`System.getProperty`),
  which is what E2B's Java kernel gives its users.

RNG reseeding after a restore: sandboxes are clones of one snapshot taken with the default kernels
running, so every clone's kernels start out with the same in-memory RNG state. After an /init that
marks a new clone (Identity.reseed_generation), each running kernel gets `reseed` before its next
cell. By then /init has answered, so the guest kernel's CRNG was reseeded (identity.add_entropy):
the agent's own `secrets` and a kernel's reads of /dev/urandom are the clone's.

- Python: the `random` module's shared instance; numpy's legacy global RandomState only if
  `numpy.random` is already imported (importing it later seeds it freshly, and a kernel that did
  not import numpy must not start doing so); tempfile's name sequence (a Random() seeded on first
  use and reseeded only when the pid changes, which a clone's does not). Out of reach: other
  Random / numpy Generator objects that already existed in the snapshot, and str hashing
  (PYTHONHASHSEED is fixed at interpreter start).
- JavaScript/TypeScript (Deno): V8's `Math.random` state cannot be reseeded from JS, so the
  prelude replaces `Math.random` with a xoshiro128** generator the reseed seeds from the agent's
  fresh entropy. `crypto.getRandomValues`, `crypto.randomUUID`, WebCrypto keys and `node:crypto`
  draw from the Deno thread's ChaCha generator, which reseeds itself from the OS after every
  64 KiB it produces: the reseed draws 128 KiB and throws them away, so the next value comes from
  the clone's own OS entropy. Out of reach: generators a user's code seeded itself.
- R: `set.seed` with a fresh integer from the agent (R would otherwise seed from the clock and
  pid, which clones can share).
- Java: `Math.random`'s shared `Random` (reached by reflection; the JVM opens java.lang to the
  kernel for this) gets a fresh seed. A `new Random()` mixes in `System.nanoTime()` and a
  `SecureRandom` reads /dev/urandom, so both differ already. Out of reach: `ThreadLocalRandom`
  (its seed generator is fixed at class initialisation) and Random objects made before the
  snapshot.
- Bash: `RANDOM=<n>` seeds $RANDOM's generator (if RANDOM is still the special variable).
  $SRANDOM (bash 5.1+) reads getrandom() and needs nothing.
"""

from __future__ import annotations

import json
import re
import secrets
import shlex

from .kernels import DENO_LANGUAGES, Language

ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def valid_env(env: dict[str, str]) -> dict[str, str]:
    return {k: v for k, v in env.items() if ENV_NAME.match(k)}


def _lit(value: str) -> str:
    """A double-quoted string literal that Python, JavaScript, R and Java all read back as value.
    ASCII-only output: non-ASCII becomes \\uXXXX escapes (surrogate pairs above the BMP), which R
    reads as code points one by one, so it gets the raw UTF-8 instead."""
    return json.dumps(value)


def _r_lit(value: str) -> str:
    return json.dumps(value, ensure_ascii=False)


# -- env vars -----------------------------------------------------------------------------------

def set_env(language: Language, env: dict[str, str], save: bool) -> str:
    """Silent code that sets `env`; with `save`, first remembers what `restore_env` puts back."""
    if language is Language.PYTHON:
        head = "import os as __cube_os\n"
        if save:
            head += f"__cube_saved_env = {{k: __cube_os.environ.get(k) for k in {json.dumps(list(env))}}}\n"
        return head + f"__cube_os.environ.update({json.dumps(env)})\n"
    if language in DENO_LANGUAGES:
        code = ""
        if save:
            code += (f"globalThis.__cubeSavedEnv = Object.fromEntries({json.dumps(list(env))}"
                     ".map((k) => [k, process.env[k]]));\n")
        return code + f"Object.assign(process.env, {json.dumps(env)}); undefined;\n"
    if language is Language.R:
        code = ""
        if save:
            # names = TRUE: R names the result only for several variables by default.
            code += (f".__cube_saved_env <- Sys.getenv(c({', '.join(_r_lit(k) for k in env)}), unset = NA, "
                     "names = TRUE)\n")
        args = ", ".join(f"`{k}` = {_r_lit(v)}" for k, v in env.items())
        return code + f"invisible(Sys.setenv({args}))\n"
    if language is Language.JAVA:
        # One block: JJava runs "silent" cells visibly (it ignores the flag), and a block has no
        # value to show.
        lines = []
        for k, v in env.items():
            if save:
                lines.append(f"{{ String __o = System.getProperty({_lit(k)}); "
                             f"if (__o != null) System.setProperty({_lit('cube.saved-env.' + k)}, __o); }}")
            lines.append(f"System.setProperty({_lit(k)}, {_lit(v)});")
        return "{\n" + "\n".join(lines) + "\n}\n"
    lines = []
    for i, (k, v) in enumerate(env.items()):
        if save:
            lines.append(f'if [ -n "${{{k}+x}}" ]; then __cube_old_{i}="${k}"; __cube_had_{i}=1; '
                         f"else __cube_had_{i}=0; fi")
        lines.append(f"export {k}={shlex.quote(v)}")
    return "\n".join(lines) + "\n"


def restore_env(language: Language, env: dict[str, str]) -> str:
    """Silent code that puts back what `set_env(..., save=True)` found."""
    if language is Language.PYTHON:
        return ("for __k, __v in __cube_saved_env.items():\n"
                "    if __v is None: __cube_os.environ.pop(__k, None)\n"
                "    else: __cube_os.environ[__k] = __v\n"
                "del __k, __v, __cube_saved_env\n")
    if language in DENO_LANGUAGES:
        return ("for (const [k, v] of Object.entries(globalThis.__cubeSavedEnv || {})) {"
                " if (v === undefined) delete process.env[k]; else process.env[k] = v; }"
                " delete globalThis.__cubeSavedEnv; undefined;\n")
    if language is Language.R:
        return ("local({ for (k in names(.__cube_saved_env)) { v <- .__cube_saved_env[[k]]; "
                "if (is.na(v)) Sys.unsetenv(k) else do.call(Sys.setenv, stats::setNames(list(v), k)) } })\n"
                "rm(.__cube_saved_env)\n")
    if language is Language.JAVA:
        return "{\n" + "\n".join(
            f"{{ String __o = System.clearProperty({_lit('cube.saved-env.' + k)}); "
            f"if (__o != null) System.setProperty({_lit(k)}, __o); else System.clearProperty({_lit(k)}); }}"
            for k in env) + "\n}\n"
    lines = []
    for i, k in enumerate(env):
        lines.append(f'if [ "$__cube_had_{i}" = 1 ]; then export {k}="$__cube_old_{i}"; '
                     f"else unset {k}; fi; unset __cube_old_{i} __cube_had_{i}")
    return "\n".join(lines) + "\n"


# -- RNG reseeding ------------------------------------------------------------------------------

PYTHON_RESEED = """\
def __cube_reseed():
    import random, sys
    random.seed()
    np_random = sys.modules.get("numpy.random")
    if np_random is not None:
        try:
            np_random.seed()
        except Exception:
            pass
    tempfile = sys.modules.get("tempfile")
    if tempfile is not None:
        tempfile._name_sequence = None
__cube_reseed()
del __cube_reseed
"""

_JAVA_MATH_RANDOM = ('{ var __f = Class.forName("java.lang.Math$RandomNumberGeneratorHolder")'
                     '.getDeclaredField("randomNumberGenerator"); __f.setAccessible(true); '
                     '((java.util.Random) __f.get(null)).setSeed(%dL); }\n')


def reseed(language: Language) -> str | None:
    """Silent code that gives a kernel fresh user-visible RNG state, or None if nothing applies."""
    if language is Language.PYTHON:
        return PYTHON_RESEED
    if language is Language.BASH:
        # bash masks the seed to INT_MAX.
        return f'if [ -n "${{RANDOM+x}}" ]; then RANDOM={secrets.randbits(31)}; fi\n'
    if language in DENO_LANGUAGES:
        seed = [secrets.randbits(32) for _ in range(4)]
        return (f"globalThis[Symbol.for('cube.reseed')]?.({json.dumps(seed)}); "
                "for (let i = 0; i < 2; i++) crypto.getRandomValues(new Uint8Array(65536)); undefined;\n")
    if language is Language.R:
        return f"invisible(set.seed({secrets.randbits(31)}L))\n"
    if language is Language.JAVA:
        return _JAVA_MATH_RANDOM % (secrets.randbits(63))
    return None


# JJava answers an interrupt at once but leaves a busy cell's thread running (a `while (true) {}`
# keeps a core busy for good). After an interrupted cell the agent stops what is still running on
# its execution threads; Thread.stop works up to JDK 19 (Debian 12 ships 17), and the kernel
# restart after an ignored interrupt (execute.py) covers the rest.
JAVA_STOP_RUNAWAY = ("{ for (Thread __t : Thread.getAllStackTraces().keySet()) "
                     "if (__t != Thread.currentThread() && __t.getName().startsWith(\"jjava-exec\") "
                     "&& __t.getState() == Thread.State.RUNNABLE) __t.stop(); }\n")


# -- one-time preludes --------------------------------------------------------------------------
#
# Deno: a string result shows as the string itself (E2B's JavaScript kernel answers `'Hello'` with
# text `Hello`; Deno would quote it), `require` exists as in Node for code written for E2B's
# Node-based kernel, and Math.random is the reseedable generator described above.
_DENO_PRELUDE = """\
{
  const internal = Deno[Deno.internal];
  const inspectArgs = internal.inspectArgs;
  internal.inspectArgs = function (args, options) {
    if (args.length === 2 && args[0] === "%o" && typeof args[1] === "string") return args[1];
    return inspectArgs.call(this, args, options);
  };
  const { createRequire } = await import("node:module");
  globalThis.require = createRequire(Deno.cwd() + "/[cell]");
  const s = new Uint32Array(4);
  crypto.getRandomValues(s);
  const rotl = (x, k) => (x << k) | (x >>> (32 - k));
  const next = () => {
    const r = Math.imul(rotl(Math.imul(s[1], 5), 7), 9) >>> 0;
    const t = s[1] << 9;
    s[2] ^= s[0]; s[3] ^= s[1]; s[1] ^= s[2]; s[0] ^= s[3]; s[2] ^= t; s[3] = rotl(s[3], 11);
    return r;
  };
  Object.defineProperty(Math, "random", {
    value: function random() { return ((next() >>> 5) * 67108864 + (next() >>> 6)) / 9007199254740992; },
    writable: true, configurable: true,
  });
  globalThis[Symbol.for("cube.reseed")] = (seed) => {
    s.set(seed);
    if (!(s[0] | s[1] | s[2] | s[3])) s[0] = 1;
  };
}
undefined;
"""


def prelude(language: Language) -> str:
    """Silent code a new kernel process of this language runs once, before its first cell."""
    if language in DENO_LANGUAGES:
        return _DENO_PRELUDE
    return ""


# The cell the host's warm pool runs in each default kernel before pooling a clone (execute.py's
# priming); languages without one are only caught up.
WARM_CODE = {Language.PYTHON: "print(1)\n"}
