// The unmodified @e2b/code-interpreter JS SDK against a Cube node: every language of the default
// template, ES modules and top-level await in JavaScript, and env vars per call. Prints one JSON
// object on stdout; tests/e2e/test_e2e_js.py asserts on it.
import { Sandbox } from '@e2b/code-interpreter'

const out = {}
const sbx = await Sandbox.create({ envs: { CUBE_JS_LANG: 'from-create' },
  metadata: { e2e: process.env.CUBE_E2E_RUN || 'js', lang: 'js-languages' } })
out.sandboxId = sbx.sandboxId
const slow = { timeoutMs: 300_000 } // a reserve kernel's first cell under TCG
try {
  const hello = {
    js: 'console.log("Hello, World!")',
    ts: 'const greeting: string = "Hello, World!"; console.log(greeting)',
    python: 'print("Hello, World!")',
    r: 'print("Hello, World!")',
    java: 'System.out.println("Hello, World!")',
    bash: 'echo "Hello, World!"',
  }
  out.hello = {}
  for (const [language, code] of Object.entries(hello)) {
    const ex = await sbx.runCode(code, { language, ...slow })
    out.hello[language] = { stdout: ex.logs.stdout, error: ex.error ? ex.error.name : null }
  }
  const esm = await sbx.runCode("import { readFileSync } from 'fs'\nconsole.log(typeof readFileSync)", { language: 'js' })
  out.esm = esm.logs.stdout
  out.tla = (await sbx.runCode("await Promise.resolve('Hello World!')", { language: 'js' })).text
  out.env = {
    ts: (await sbx.runCode('Deno.env.get("CUBE_JS_LANG")', { language: 'ts' })).text,
    java: (await sbx.runCode('System.getProperty("CUBE_JS_CALL")', { language: 'java', envs: { CUBE_JS_CALL: 'call' } })).text,
    r: (await sbx.runCode('Sys.getenv("CUBE_JS_CALL")', { language: 'r', envs: { CUBE_JS_CALL: 'call' } })).results.map(r => r.text),
  }
  const err = await sbx.runCode('throw new TypeError("boom")', { language: 'ts' })
  out.tsError = err.error ? { name: err.error.name, value: err.error.value } : null
} finally {
  out.killed = await sbx.kill()
}
console.log(JSON.stringify(out))
