// The unmodified E2B JS SDK's Template.build() against a Cube node: a definition on the
// code-interpreter template with a COPY of a local directory, env vars, a RUN step and a start
// command with waitForPort, then a sandbox from its name. (A failing step: the Python test.)
// Configuration comes only from the environment (E2B_API_URL, E2B_API_KEY, NODE_EXTRA_CA_CERTS).
// Prints one JSON object on stdout; tests/e2e/test_e2e_template_sdk.py asserts on it.
import fs from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import { Sandbox, Template, waitForPort } from 'e2b'

const name = process.argv[2]
const marker = process.argv[3]
const out = { name }
const ctx = fs.mkdtempSync(path.join(os.tmpdir(), 'cube-js-tpl-'))
fs.mkdirSync(path.join(ctx, 'site'))
fs.writeFileSync(path.join(ctx, 'site', 'index.html'), `<p>${marker}</p>\n`)

const template = Template({ fileContextPath: ctx })
  .fromTemplate('code-interpreter')
  .copy('site', '/opt/site/')
  .setEnvs({ CUBE_JS: marker })
  .runCmd(`echo js-step-${marker}`)
  .setStartCmd('python3 -m http.server 8766 --directory /opt/site', waitForPort(8766))
const logs = []
const t0 = Date.now()
const info = await Template.build(template, name, { onBuildLogs: (e) => logs.push(e.message) })
out.buildMs = Date.now() - t0
out.templateId = info.templateId
out.stepOutput = logs.includes(`js-step-${marker}`)
out.uploaded = logs.some((l) => l.includes("Uploaded 'site'"))

const sbx = await Sandbox.create(name, { metadata: { e2e: process.env.CUBE_E2E_RUN || 'js', lang: 'js' } })
out.sandboxId = sbx.sandboxId
try {
  out.env = (await sbx.commands.run('echo $CUBE_JS')).stdout.trim()
  const page = await fetch(`https://${sbx.getHost(8766)}/index.html`)
  out.page = { status: page.status, body: (await page.text()).trim() }
} finally {
  out.killed = await sbx.kill()
}

fs.rmSync(ctx, { recursive: true, force: true })
console.log(JSON.stringify(out))
