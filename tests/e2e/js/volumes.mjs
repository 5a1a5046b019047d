// The unmodified E2B JS SDK's volumes against a Cube node: Volume.create, a content write (sent
// by the SDK to https://api.<domain> with the volume's token), a sandbox that mounts the volume
// and writes to it, a refused content read while mounted, the data read back after the kill,
// then Volume.destroy. Configuration comes only from the environment (E2B_API_URL, E2B_API_KEY,
// NODE_EXTRA_CA_CERTS). Prints one JSON object on stdout; tests/e2e/test_e2e_volumes.py asserts on it.
import { Sandbox, Volume } from 'e2b'

const name = process.argv[2]
const out = { name }
const vol = await Volume.create(name)
out.volumeId = vol.volumeId
try {
  await vol.writeFile('/from-js.txt', 'written by the JS SDK')
  const sbx = await Sandbox.create('code-interpreter', { volumeMounts: { '/mnt/js': vol } })
  out.sandboxId = sbx.sandboxId
  out.seen = await sbx.files.read('/mnt/js/from-js.txt')
  await sbx.commands.run('echo from the sandbox > /mnt/js/back.txt')
  try {
    await vol.readFile('/back.txt')
    out.refused = null
  } catch (e) {
    out.refused = String(e.message || e)
  }
  out.killed = await sbx.kill()
  out.back = await vol.readFile('/back.txt')
  out.entries = (await vol.list('/')).map((e) => e.name).sort()
} finally {
  out.destroyed = await Volume.destroy(vol.volumeId)
}
console.log(JSON.stringify(out))
