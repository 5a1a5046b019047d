// The unmodified E2B JS SDK's Template.build() from a Dockerfile on a registry image: the SDK parses
// the Dockerfile into steps (FROM, USER, RUN, COPY, ENV, WORKDIR), uploads the COPY context, and
// Cube runs the steps in a build VM. Then a sandbox from its name runs `probe`.
// Usage: node image_build.mjs <context dir> <Dockerfile> <template name> <probe command>
// Configuration comes only from the environment (E2B_API_URL, E2B_API_KEY, NODE_EXTRA_CA_CERTS).
// Prints one JSON object on stdout; tests/cluster/test_builds_from_images.py asserts on it.
import fs from 'node:fs'
import { Sandbox, Template } from 'e2b'

const [ctx, dockerfile, name, probe] = process.argv.slice(2)
const out = { name }
const template = Template({ fileContextPath: ctx }).fromDockerfile(fs.readFileSync(dockerfile, 'utf8'))
const logs = []
await Template.build(template, name, { onBuildLogs: (e) => logs.push(e.message) })
// Every step, run or taken from the cache (the Python build of the same steps may have left them).
out.steps = logs.filter((l) => /^(CACHED )?\[\d+\/\d+\] /.test(l))
const sbx = await Sandbox.create(name)
try {
  out.probe = (await sbx.commands.run(probe)).stdout.split('\n').filter((l) => l !== '')
} finally {
  await sbx.kill()
}
console.log(JSON.stringify(out))
