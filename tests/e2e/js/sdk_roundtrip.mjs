// The unmodified E2B JS SDKs against a Cube node: create, runCode, files, commands, kill.
// Configuration comes only from the environment (E2B_API_URL, E2B_API_KEY, NODE_EXTRA_CA_CERTS),
// as a user would set it. Prints one JSON object on stdout; tests/e2e/test_e2e_js.py asserts on it.
import { Sandbox } from '@e2b/code-interpreter'

const marker = process.argv[2] || 'cube-js'
const out = { marker }
const t0 = Date.now()
const sbx = await Sandbox.create({ metadata: { e2e: process.env.CUBE_E2E_RUN || 'js', lang: 'js' } })
out.sandboxId = sbx.sandboxId
out.sandboxDomain = sbx.sandboxDomain
out.createMs = Date.now() - t0
try {
  const ex = await sbx.runCode(`x = 6 * 7\nprint("${marker}")\nx`)
  out.runCode = { stdout: ex.logs.stdout, stderr: ex.logs.stderr, text: ex.text, error: ex.error ? ex.error.name : null }
  const again = await sbx.runCode('x + 1')
  out.state = again.text
  const js = await sbx.runCode('[1, 2, 3].map(v => v * 2)', { language: 'javascript' })
  out.jsKernel = js.text
  const path = `/home/user/${marker}.txt`
  const body = `hello from node ${marker}\n`
  await sbx.files.write(path, body)
  out.fileRoundTrip = (await sbx.files.read(path)) === body
  out.fileList = (await sbx.files.list('/home/user')).map(e => e.name).filter(n => n.startsWith(marker))
  const cmd = await sbx.commands.run(`cat ${path} | wc -c; id -un`)
  out.command = { exitCode: cmd.exitCode, stdout: cmd.stdout }
  out.info = { templateId: (await sbx.getInfo()).templateId, running: await sbx.isRunning() }
} finally {
  out.killed = await sbx.kill()
}
out.connectAfterKill = await Sandbox.connect(out.sandboxId).then(() => 'connected', e => e.constructor.name)
console.log(JSON.stringify(out))
