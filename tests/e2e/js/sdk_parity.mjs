// The calls of E2B's 2026 SDK releases (issue 14), made by the unmodified JS SDKs against a Cube
// node: snapshots, fork, live network update, private traffic, the v2 create/connect endpoints,
// Template.exists, the envd details, filesystem-only pause and snapshots with reboot on resume,
// maskRequestHost, httpsPorts, and template tags. `node sdk_parity.mjs <case>` runs one case.
//
// Configuration comes from the environment as a user would set it (E2B_API_URL, E2B_API_KEY,
// NODE_EXTRA_CA_CERTS) plus CUBE_E2E_RUN, the e2e run's id that every sandbox carries as metadata
// so that the e2e conftest can find and clean up what is left. Each sandbox id is printed as
// `created <id>` the moment it exists and each snapshot as `snapshot <id>`, so the test learns
// them even if this script dies; the last line is one JSON object with what the case observed,
// which tests/e2e/test_e2e_js_parity.py asserts on. Whatever happens, every sandbox made here is
// killed and every snapshot deleted before that last line is printed.
import fs from 'node:fs'
import { Sandbox, Template } from '@e2b/code-interpreter'

const RUN = process.env.CUBE_E2E_RUN || 'js'
const which = process.argv[2]
const marker = `m${Math.random().toString(16).slice(2, 10)}`
const out = { case: which, created: [], snapshots: [] }

const tag = (c, extra = {}) => ({ e2e: RUN, lang: 'js', case: `js-${c}`, ...extra })
const sleep = ms => new Promise(resolve => setTimeout(resolve, ms))

function track(sbx) {
  out.created.push(sbx.sandboxId)
  console.log(`created ${sbx.sandboxId}`)
  return sbx
}

async function create(c, opts = {}, template = undefined) {
  const o = { ...opts, metadata: tag(c, opts.metadata) }
  return track(template ? await Sandbox.create(template, o) : await Sandbox.create(o))
}

// What a call threw: the SDK's error class, its status code when it has one, and its message.
async function failure(promise) {
  try {
    await promise
    return null
  } catch (e) {
    return { name: e.name, statusCode: e.statusCode, message: String(e.message) }
  }
}

async function waitFor(what, fn, timeoutMs = 60_000) {
  const deadline = Date.now() + timeoutMs
  let last
  for (;;) {
    try {
      last = await fn()
      if (last) return last
    } catch (e) {
      last = e
    }
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what} (last: ${last})`)
    await sleep(500)
  }
}

const cases = {}

// sbx.createSnapshot({name}), Sandbox.create(snapshotId or name), sbx.listSnapshots(),
// Sandbox.listSnapshots({sandboxId | name}), Template.exists(name), Sandbox.deleteSnapshot().
cases.snapshot = async () => {
  const src = await create('snapshot-src', { envs: { WHO: 'source' } })
  out.srcSet = (await src.runCode("answer = 41; print('set')")).logs.stdout
  await src.files.write('/home/user/mark.txt', 'from the source')
  const name = `js-snap-${marker}`
  const snap = await src.createSnapshot({ name })
  out.snapshots.push(snap.snapshotId)
  console.log(`snapshot ${snap.snapshotId}`)
  out.snapshotId = snap.snapshotId
  out.name = name
  out.names = snap.names
  out.srcAfterSnapshot = (await src.runCode('answer')).text
  await src.files.write('/home/user/later.txt', 'after the snapshot')

  const a = await create('snapshot-a', { envs: { WHO: 'from-snapshot-a' } }, snap.snapshotId)
  const b = await create('snapshot-b', {}, name) // by its name, as a template alias
  out.ids = [src.sandboxId, a.sandboxId, b.sandboxId]
  out.templateIds = [(await a.getInfo()).templateId, (await b.getInfo()).templateId]
  out.aAnswer = (await a.runCode('answer + 1')).text
  out.aMark = await a.files.read('/home/user/mark.txt')
  out.aHasLater = await a.files.exists('/home/user/later.txt')
  out.aWho = (await a.commands.run('echo $WHO')).stdout.trim()
  await a.files.write('/home/user/mine.txt', 'a')
  out.mineElsewhere = [await b.files.exists('/home/user/mine.txt'), await src.files.exists('/home/user/mine.txt')]
  const rand = 'import random; print(random.random())'
  out.randoms = [(await a.runCode(rand)).logs.stdout, (await b.runCode(rand)).logs.stdout]

  out.listedBySandbox = (await Sandbox.listSnapshots({ sandboxId: src.sandboxId }).nextItems()).map(s => s.snapshotId)
  out.listedFromInstance = (await src.listSnapshots().nextItems()).map(s => s.snapshotId)
  const all = []
  for (const pager = Sandbox.listSnapshots({ limit: 1 }); pager.hasNext;) {
    all.push(...(await pager.nextItems()).map(s => s.snapshotId))
  }
  out.inTeamListing = all.includes(snap.snapshotId)
  out.listedByName = (await Sandbox.listSnapshots({ name }).nextItems()).map(s => s.snapshotId)
  out.nameExists = await Template.exists(name)

  // In use by a and b: refused, and a keeps working.
  out.deleteInUse = await failure(Sandbox.deleteSnapshot(snap.snapshotId))
  out.aAfterRefusal = (await a.runCode('answer')).text
  out.killed = [await a.kill(), await b.kill()]
  out.deleted = await Sandbox.deleteSnapshot(snap.snapshotId)
  out.deletedAgain = await Sandbox.deleteSnapshot(snap.snapshotId)
  out.nameExistsAfterDelete = await Template.exists(name)
  out.listedByNameAfterDelete = (await Sandbox.listSnapshots({ name }).nextItems()).map(s => s.snapshotId)
  out.createFromDeleted = await failure(Sandbox.create(snap.snapshotId, { metadata: tag('snapshot-deleted') })
    .then(s => track(s)))
  out.srcAtEnd = (await src.runCode('answer')).text
}

// sbx.fork({count}) and Sandbox.fork(id, {count}).
cases.fork = async () => {
  const src = await create('fork-src', { envs: { WHO: 'source' } })
  out.srcSet = (await src.runCode("state = ['src']; print(len(state))")).logs.stdout
  await src.files.write('/home/user/fork.txt', 'written before the fork')
  const forks = await src.fork({ count: 2, timeoutMs: 120_000 })
  out.forkKinds = forks.map(f => (f instanceof Sandbox ? 'Sandbox' : `${f.name}: ${f.message}`))
  for (const f of forks) if (f instanceof Sandbox) track(f)
  const [a, b] = forks
  out.ids = [src.sandboxId, a.sandboxId, b.sandboxId]
  out.aState = (await a.runCode("state.append('a'); state")).text
  out.bState = (await b.runCode('state')).text
  out.bWho = (await b.commands.run('echo $WHO').then(r => r.stdout.trim()))
  out.bFile = await b.files.read('/home/user/fork.txt')
  await b.files.write('/home/user/only-b.txt', 'b')
  out.onlyBElsewhere = [await a.files.exists('/home/user/only-b.txt'), await src.files.exists('/home/user/only-b.txt')]
  out.metadata = { src: (await src.getInfo()).metadata, a: (await a.getInfo()).metadata }
  out.srcState = (await src.runCode('state')).text
  out.srcRunning = await src.isRunning()
  out.srcSnapshots = (await src.listSnapshots().nextItems()).map(s => s.snapshotId)

  // The static form, one fork.
  const [c] = await Sandbox.fork(src.sandboxId, { count: 1 })
  if (c instanceof Sandbox) track(c)
  out.staticFork = c instanceof Sandbox ? (await c.runCode('state')).text : `${c.name}: ${c.message}`
  out.distinct = new Set([...out.ids, c.sandboxId]).size

  // The JS SDK passes the count through; the API refuses a bad one, nothing is created.
  out.countZero = await failure(src.fork({ count: 0 }))
  out.countNegative = await failure(src.fork({ count: -1 }))
  out.unknown = await failure(Sandbox.fork('nosuchsandbox0000000', { count: 1 }))
  out.forksOfSrc = (await Sandbox.list({ query: { metadata: tag('fork-src') } }).nextItems()).map(s => s.sandboxId).sort()
}

// sbx.updateNetwork(...): the guest sends UDP datagrams to a listener in a network namespace the
// test made (CUBE_E2E_UDP_TARGET, it logs what arrives to CUBE_E2E_UDP_LOG); what the policy
// lets out arrives, what it denies does not, and the VM is the same throughout.
cases.network = async () => {
  const [host, port] = process.env.CUBE_E2E_UDP_TARGET.split(':')
  const log = process.env.CUBE_E2E_UDP_LOG
  const sbx = await create('update-network')
  await sbx.runCode('kept = "in memory"')
  await sbx.files.write('/tmp/udp.py', [
    'import socket, sys, time',
    's = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)',
    'for _ in range(3):',
    '    s.sendto(sys.argv[3].encode(), (sys.argv[1], int(sys.argv[2])))',
    '    time.sleep(0.2)',
    'print("sent")',
  ].join('\n'))
  const arrived = m => fs.existsSync(log) && fs.readFileSync(log, 'utf8').split('\n').includes(m)
  // Sends `<label>-<marker>` from the guest; true if the listener got it (denied: wait a while).
  const send = async label => {
    const m = `${label}-${marker}`
    const r = await sbx.commands.run(`python3 /tmp/udp.py ${host} ${port} ${m}`, { timeoutMs: 30_000 })
    if (r.stdout.trim() !== 'sent') throw new Error(`probe did not run: ${r.stdout} ${r.stderr}`)
    const deadline = Date.now() + 4000
    while (Date.now() < deadline) {
      if (arrived(m)) return true
      await sleep(200)
    }
    return arrived(m)
  }
  const info = async () => {
    const i = await sbx.getInfo()
    return { allowInternetAccess: i.allowInternetAccess, network: i.network ? { allowOut: i.network.allowOut, denyOut: i.network.denyOut } : null }
  }
  out.steps = []
  const step = async (label, network) => {
    if (network !== undefined) await sbx.updateNetwork(network)
    out.steps.push({ label, arrived: await send(label), info: await info() })
  }
  await step('open')
  await step('deny-host', { denyOut: [`${host}/32`] })
  await step('allow-wins', { denyOut: ['0.0.0.0/0'], allowOut: [`${host}/32`] })
  await step('no-internet', { allowInternetAccess: false })
  await step('cleared', {})
  out.badRule = await failure(sbx.updateNetwork({ denyOut: ['not-a-cidr/99'] }))
  out.afterBadRule = await send('after-bad-rule')
  out.unknown = await failure(Sandbox.updateNetwork('nosuchsandbox0000000', { denyOut: ['10.0.0.0/8'] }))
  out.kept = (await sbx.runCode('kept')).text
}

// network: {allowPublicTraffic: false}: a traffic access token, sent by the SDK on its own calls
// and required by the proxy from every other client.
cases.private = async () => {
  const sbx = await create('private-traffic', { network: { allowPublicTraffic: false } })
  const token = sbx.trafficAccessToken
  out.tokenLength = token ? token.length : 0
  out.runCode = (await sbx.runCode('6 * 7')).text
  out.envd = (await sbx.commands.run('echo envd')).stdout.trim()
  out.info = await sbx.getInfo().then(i => ({ network: i.network ?? null }))
  await sbx.commands.run('python3 -m http.server 8000 --bind 0.0.0.0', { background: true })
  const url = `https://${sbx.getHost(8000)}/`
  const get = async headers => {
    const r = await fetch(url, { headers })
    return { status: r.status, body: (await r.text()).slice(0, 300) }
  }
  out.withToken = await waitFor('the server in the sandbox', async () => {
    const r = await get({ 'e2b-traffic-access-token': token })
    return r.status === 200 ? r : null
  })
  out.withToken.listsHome = out.withToken.body.includes('Directory listing')
  delete out.withToken.body
  out.without = await get({})
  out.wrong = await get({ 'e2b-traffic-access-token': '0'.repeat(32) })
  out.connectToken = (await Sandbox.connect(sbx.sandboxId)).trafficAccessToken === token
  const [fork] = await sbx.fork({ count: 1 })
  if (!(fork instanceof Sandbox)) throw fork
  track(fork)
  out.forkToken = { set: !!fork.trafficAccessToken, differs: fork.trafficAccessToken !== token }
  out.forkRunCode = (await fork.runCode('6 * 7')).text
  // The fork's copy of the server answers only to the fork's own token.
  const forkUrl = `https://${fork.getHost(8000)}/`
  out.forkWithOwn = await waitFor("the fork's server", async () => {
    const r = await fetch(forkUrl, { headers: { 'e2b-traffic-access-token': fork.trafficAccessToken } })
    return r.status === 200 ? r.status : null
  })
  out.forkWithSources = (await fetch(forkUrl, { headers: { 'e2b-traffic-access-token': token } })).status
}

// The endpoints newer SDKs call: POST /v2/sandboxes, POST /v2/sandboxes/{id}/connect, and
// GET /templates/aliases/{alias} (Template.exists). The SDK's logger shows the requests.
cases.api = async () => {
  const requests = []
  const logger = {
    info: (...a) => { if (String(a[0]).startsWith('Request ')) requests.push(String(a[0]).slice(8)) },
    error: () => {},
  }
  const api = process.env.E2B_API_URL.replace(/\/$/, '')
  const rel = r => r.replace(api, '')
  const sbx = await create('v2-endpoints', { logger })
  await sbx.runCode('v2 = "kept"')
  const again = await Sandbox.connect(sbx.sandboxId, { logger, timeoutMs: 600_000 })
  out.connectSame = again.sandboxId === sbx.sandboxId
  out.connectRunCode = (await again.runCode('v2')).text
  out.paused = await sbx.pause()
  out.stateWhilePaused = (await Sandbox.getInfo(sbx.sandboxId)).state
  const resumed = await Sandbox.connect(sbx.sandboxId, { logger })
  out.stateAfterConnect = (await Sandbox.getInfo(sbx.sandboxId)).state
  out.resumedRunCode = (await resumed.runCode('v2')).text
  out.requests = requests.map(rel).filter(r => !r.includes('://'))
  out.connectUnknown = await failure(Sandbox.connect('nosuchsandbox0000000'))
  out.getInfoUnknown = await failure(Sandbox.getInfo('nosuchsandbox0000000'))
  out.killUnknown = await Sandbox.kill('nosuchsandbox0000000')
  out.exists = {}
  for (const name of ['base', 'code-interpreter-v1', `no-such-template-${marker}`]) {
    out.exists[name] = await Template.exists(name)
  }
  out.aliasExistsBase = await Template.aliasExists('base')
}

// envd as E2B's: watch events, symlinks, file metadata, signed URLs, python on PATH.
cases.envd = async () => {
  const sbx = await create('envd-details')
  await sbx.files.makeDir('/home/user/w')
  const events = []
  const handle = await sbx.files.watchDir('/home/user/w', e => events.push([e.name, e.type]))
  await sbx.files.write('/home/user/w/f.txt', 'content')
  // Three events are expected; wait for a fourth a little to catch extras too.
  const deadline = Date.now() + 3000
  while (Date.now() < deadline && events.length < 4) await sleep(100)
  await handle.stop()
  out.events = events

  await sbx.commands.run('ln -s f.txt link', { cwd: '/home/user/w' })
  const link = await sbx.files.getInfo('w/link')
  out.link = { type: link.type, symlinkTarget: link.symlinkTarget, name: link.name }

  out.metaWritten = (await sbx.files.write('/home/user/w/f.txt', '1', { metadata: { k: 'v' } })).metadata ?? null
  out.metaInfo = (await sbx.files.getInfo('/home/user/w/f.txt')).metadata ?? null
  out.metaOverwritten = (await sbx.files.write('/home/user/w/f.txt', '2')).metadata ?? null
  out.metaAfter = (await sbx.files.getInfo('/home/user/w/f.txt')).metadata ?? null

  const expired = await fetch(await sbx.downloadUrl('/home/user/w/f.txt', { useSignatureExpiration: -10 }))
  out.expired = { status: expired.status, body: await expired.json().catch(() => null) }
  const fresh = await fetch(await sbx.downloadUrl('/home/user/w/f.txt', { useSignatureExpiration: 60 }))
  out.fresh = { status: fresh.status, body: await fresh.text() }

  const py = await sbx.commands.run("python -c 'import sys; print(sys.version_info[0])' && python3 --version")
  out.python = py.stdout.split(/\s+/).slice(0, 2)
}

// A foreground command streaming when its sandbox is killed.
cases.killed = async () => {
  const sbx = await create('kill-mid-command')
  let started
  const startedP = new Promise(resolve => { started = resolve })
  const run = sbx.commands.run('echo started; sleep 120', { timeoutMs: 300_000, onStdout: () => started() })
    .then(r => ({ result: r.exitCode }), e => ({ name: e.name, message: String(e.message) }))
  await Promise.race([startedP, sleep(60_000).then(() => { throw new Error('the command never printed') })])
  const t0 = Date.now()
  out.killedCall = await Sandbox.kill(sbx.sandboxId)
  out.outcome = await Promise.race([run, sleep(60_000).then(() => ({ name: 'StillRunning' }))])
  out.endedAfterMs = Date.now() - t0
  out.runningAfter = await sbx.isRunning().catch(e => e.name)
  out.connectAfter = await failure(Sandbox.connect(sbx.sandboxId))
}

// ---- filesystem-only pause, reboot on resume, filesystem-only snapshots (cold boots) ----------

// A cold boot takes tens of seconds under TCG: the calls that boot get a request timeout to match.
const BOOT = { requestTimeoutMs: 180_000 }
// In guest memory only (tmpfs): what a memory restore keeps and a boot does not.
const MEMORY_MARK = '/dev/shm/cube-mark'

// The API as a user without an SDK method for it would call it (the key, the JSON body).
async function api(method, path, body = undefined) {
  const r = await fetch(`${process.env.E2B_API_URL.replace(/\/$/, '')}${path}`, {
    method,
    headers: { 'X-API-KEY': process.env.E2B_API_KEY, ...(body === undefined ? {} : { 'Content-Type': 'application/json' }) },
    body: body === undefined ? undefined : JSON.stringify(body),
    signal: AbortSignal.timeout(180_000),
  })
  const text = await r.text()
  let json = null
  try { json = JSON.parse(text) } catch { /* not JSON */ }
  return { status: r.status, json, text: text.slice(0, 500) }
}

// What GET /sandboxes/{id} says of a pause (the SDK's getInfo does not map pauseMode).
const pauseMode = async id => (await api('GET', `/sandboxes/${id}`)).json?.pauseMode ?? null

// A kernel variable, a file in /dev/shm and a file on disk written through envd (not synced).
async function markMemoryAndDisk(sbx, text) {
  const set = (await sbx.runCode("kept = 'in the kernel'; print('ok')")).logs.stdout
  await sbx.commands.run(`echo here > ${MEMORY_MARK}`)
  await sbx.files.write('/home/user/notes.txt', text)
  return set
}

// What a sandbox that should have cold-booted on its disk shows.
async function bootedWithDisk(sbx) {
  const kept = await sbx.runCode('kept')
  return {
    notes: await sbx.files.read('/home/user/notes.txt'),
    memoryMark: (await sbx.commands.run(`test -e ${MEMORY_MARK} && echo memory || echo booted`)).stdout.trim(),
    keptError: kept.error ? kept.error.name : null,
    runCode: (await sbx.runCode('1 + 1')).text,
  }
}

// sbx.pause({keepMemory: false}) then Sandbox.connect: a cold boot on the disk; then a full pause
// of the same sandbox and Sandbox.connect({onResume: 'reboot'}): a cold boot too.
cases['fs-pause'] = async () => {
  const sbx = await create('fs-pause', { envs: { WHO: 'me' }, timeoutMs: 600_000 })
  const id = sbx.sandboxId
  out.set = await markMemoryAndDisk(sbx, 'written before the pause')
  let t0 = Date.now()
  out.fsPaused = await sbx.pause({ keepMemory: false, ...BOOT })
  out.fsPauseMs = Date.now() - t0
  out.fsState = (await Sandbox.getInfo(id)).state
  out.fsPauseMode = await pauseMode(id)
  t0 = Date.now()
  const back = await Sandbox.connect(id, { timeoutMs: 600_000, ...BOOT })
  out.fsBootMs = Date.now() - t0
  out.fsSameId = back.sandboxId === id
  out.fsStateAfter = (await Sandbox.getInfo(id)).state
  out.fsPauseModeAfter = await pauseMode(id)
  out.fsBooted = await bootedWithDisk(back)
  out.fsWho = (await back.commands.run('echo $WHO')).stdout.trim()
  await back.files.write('/home/user/after.txt', 'after the reboot')
  out.fsAfter = await back.files.read('/home/user/after.txt')

  // A full pause, resumed by rebooting: what was synced to disk is there, memory is not.
  out.set2 = await markMemoryAndDisk(back, 'written before the full pause')
  // On a running sandbox onResume: 'reboot' is a no-op: its memory stays.
  out.rebootWhileRunning = (await (await Sandbox.connect(id, { onResume: 'reboot' })).runCode('kept')).text
  await back.commands.run('sync')
  out.fullPaused = await back.pause(BOOT)
  out.fullPauseMode = await pauseMode(id)
  t0 = Date.now()
  const rebooted = await Sandbox.connect(id, { onResume: 'reboot', timeoutMs: 600_000, ...BOOT })
  out.rebootMs = Date.now() - t0
  out.rebootState = (await Sandbox.getInfo(id)).state
  out.rebooted = await bootedWithDisk(rebooted)
  out.rebootAfter = await rebooted.files.read('/home/user/after.txt')
  out.badOnResume = await failure(Sandbox.connect(id, { onResume: 'thaw' }))
}

// A filesystem-only snapshot: the JS SDK's createSnapshot (2.51) has no option for it, so it is
// taken through the API (POST /sandboxes/{id}/snapshots {memory: false}); the SDK creates from it.
cases['fs-snapshot'] = async () => {
  const src = await create('fs-snapshot-src', { timeoutMs: 600_000 })
  out.set = await markMemoryAndDisk(src, 'written before the pause')
  const name = `js-fs-snap-${marker}`
  const r = await api('POST', `/sandboxes/${src.sandboxId}/snapshots`, { name, memory: false })
  out.snapshotStatus = r.status
  if (r.status !== 201) throw new Error(`snapshot: ${r.status} ${r.text}`)
  const snapshotId = r.json.snapshotID
  out.snapshots.push(snapshotId)
  console.log(`snapshot ${snapshotId}`)
  out.snapshotId = snapshotId
  out.names = r.json.names
  out.name = name
  out.listedBySandbox = (await Sandbox.listSnapshots({ sandboxId: src.sandboxId }).nextItems()).map(s => s.snapshotId)
  // The source runs on, with its memory.
  out.srcKept = (await src.runCode('print(kept)')).logs.stdout
  await src.files.write('/home/user/later.txt', 'after the snapshot')

  const t0 = Date.now()
  const a = await create('fs-snapshot-a', { timeoutMs: 600_000, ...BOOT }, snapshotId)
  out.bootMs = Date.now() - t0
  out.aTemplateId = (await a.getInfo()).templateId
  out.aBooted = await bootedWithDisk(a)
  out.aHasLater = await a.files.exists('/home/user/later.txt')
  await a.files.write('/home/user/mine.txt', 'a')
  out.mineInSrc = await src.files.exists('/home/user/mine.txt')
  out.aKilled = await a.kill()
  out.deleted = await Sandbox.deleteSnapshot(snapshotId)
  out.srcKeptAtEnd = (await src.runCode('print(kept)')).logs.stdout
}

// lifecycle: {onTimeout: {action: 'pause', keepMemory: false}}: the timeout's pause keeps the disk
// only; with autoResume it is refused, by the SDK and by the API, and nothing is created.
cases['fs-autopause'] = async () => {
  const lifecycle = { onTimeout: { action: 'pause', keepMemory: false } }
  const sbx = await create('fs-autopause', { timeoutMs: 10_000, lifecycle })
  out.lifecycle = (await sbx.getInfo()).lifecycle
  const t0 = Date.now()
  out.autoPausedState = await waitFor('the timeout pause', async () => {
    const s = (await Sandbox.getInfo(sbx.sandboxId)).state
    return s === 'paused' ? s : null
  }, 180_000)
  out.autoPausedAfterMs = Date.now() - t0
  // getInfo says paused while the pause is still being taken (E2B's listing does too); pauseMode
  // is reported once it is over.
  out.autoPauseMode = await waitFor('the pause to finish', () => pauseMode(sbx.sandboxId), 60_000)

  const c = 'fs-autoresume'
  out.sdkRefusal = await failure(Sandbox.create({ metadata: tag(c), lifecycle: { ...lifecycle, autoResume: true } })
    .then(s => track(s)))
  // The same request as the SDK would have sent it, straight to the API.
  const r = await api('POST', '/v2/sandboxes', {
    templateID: 'code-interpreter-v1', metadata: tag(c), autoPause: true, autoPauseMemory: false,
    autoResume: { enabled: true },
  })
  if (r.json?.sandboxID) {
    out.created.push(r.json.sandboxID)
    console.log(`created ${r.json.sandboxID}`)
  }
  out.apiRefusal = { status: r.status, message: r.json?.message ?? r.text }
  out.refusedCreated = (await Sandbox.list({ query: { metadata: tag(c), state: ['running', 'paused'] } }).nextItems())
    .map(s => s.sandboxId)
}

// network: {maskRequestHost}: the Host servers in the sandbox see, and the public one in
// X-Forwarded-Host; the SDK's own ports keep working; a pause and a resume keep it.
cases.mask = async () => {
  const sbx = await create('mask-request-host', { network: { maskRequestHost: 'localhost:${PORT}' } })
  await sbx.files.write('/tmp/host_echo.py', [
    'import http.server, json, sys',
    'class H(http.server.BaseHTTPRequestHandler):',
    '    def do_GET(self):',
    '        body = json.dumps({"host": self.headers.get("Host"), "xfh": self.headers.get("X-Forwarded-Host")}).encode()',
    '        self.send_response(200)',
    '        self.send_header("Content-Type", "application/json")',
    '        self.send_header("Content-Length", str(len(body)))',
    '        self.end_headers()',
    '        self.wfile.write(body)',
    '    def log_message(self, *args):',
    '        pass',
    'http.server.ThreadingHTTPServer(("0.0.0.0", int(sys.argv[1])), H).serve_forever()',
  ].join('\n'))
  const ports = [8000, 3000]
  for (const p of ports) await sbx.commands.run(`python3 /tmp/host_echo.py ${p}`, { background: true })
  const seen = port => waitFor(`the server on ${port}`, async () => {
    const r = await fetch(`https://${sbx.getHost(port)}/`, { signal: AbortSignal.timeout(10_000) })
    return r.status === 200 ? await r.json() : null
  })
  out.hosts = Object.fromEntries(ports.map(p => [p, sbx.getHost(p)]))
  out.seen = {}
  for (const p of ports) out.seen[p] = await seen(p)
  out.info = (await sbx.getInfo()).network ?? null
  out.runCode = (await sbx.runCode('6 * 7')).text
  out.paused = await sbx.pause()
  const resumed = await Sandbox.connect(sbx.sandboxId)
  out.seenAfterResume = await seen(8000)
  out.envdAfterResume = (await resumed.commands.run('echo envd')).stdout.trim()
  out.infoAfterResume = (await resumed.getInfo()).network ?? null
}

// network: {httpsPorts}: a server in the sandbox that speaks HTTPS itself (the certificate and key
// the test made, in CUBE_E2E_TLS_CERT and CUBE_E2E_TLS_KEY) answers at https:// + getHost(port).
cases.https = async () => {
  const sbx = await create('https-ports', { network: { httpsPorts: [8443] } })
  await sbx.files.write('/tmp/tls/guest.pem', fs.readFileSync(process.env.CUBE_E2E_TLS_CERT, 'utf8'))
  await sbx.files.write('/tmp/tls/guest.key', fs.readFileSync(process.env.CUBE_E2E_TLS_KEY, 'utf8'))
  await sbx.files.write('/tmp/tls_echo.py', [
    'import http.server, json, ssl',
    'class H(http.server.BaseHTTPRequestHandler):',
    '    def do_GET(self):',
    '        body = json.dumps({"host": self.headers.get("Host"), "tls": True}).encode()',
    '        self.send_response(200)',
    '        self.send_header("Content-Type", "application/json")',
    '        self.send_header("Content-Length", str(len(body)))',
    '        self.end_headers()',
    '        self.wfile.write(body)',
    '    def log_message(self, *args):',
    '        pass',
    'tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)',
    'tls.load_cert_chain("/tmp/tls/guest.pem", "/tmp/tls/guest.key")',
    'srv = http.server.ThreadingHTTPServer(("0.0.0.0", 8443), H)',
    'srv.socket = tls.wrap_socket(srv.socket, server_side=True)',
    'srv.serve_forever()',
  ].join('\n'))
  await sbx.commands.run('python3 /tmp/tls_echo.py', { background: true })
  out.host = sbx.getHost(8443)
  out.seen = await waitFor('the HTTPS server on 8443', async () => {
    const r = await fetch(`https://${sbx.getHost(8443)}/`, { signal: AbortSignal.timeout(10_000) })
    return r.status === 200 ? await r.json() : null
  })
  out.info = (await sbx.getInfo()).network ?? null
}

// ---- template tags ------------------------------------------------------------------------------

// A named snapshot is a template of the team: Template.assignTags tags its build, getTags lists
// them, Sandbox.create('<name>:<tag>') starts from it, removeTags removes one.
cases.tags = async () => {
  const src = await create('tags-src')
  await src.files.write('/home/user/mark.txt', 'tagged build')
  const name = `js-tags-${marker}`
  const snap = await src.createSnapshot({ name })
  out.snapshots.push(snap.snapshotId)
  console.log(`snapshot ${snap.snapshotId}`)
  out.snapshotId = snap.snapshotId
  out.name = name
  const tid = snap.snapshotId.replace(/:default$/, '')

  const assigned = await Template.assignTags(`${name}:default`, ['v1', 'Stable'])
  out.assigned = { tags: [...assigned.tags].sort(), buildId: assigned.buildId }
  const tags = await Template.getTags(name)
  out.tags = tags.map(t => t.tag)
  out.tagBuildIds = [...new Set(tags.map(t => t.buildId))]
  out.tagDates = tags.every(t => t.createdAt instanceof Date && !Number.isNaN(t.createdAt.getTime()))
  out.tagsById = (await Template.getTags(tid)).map(t => t.tag)

  const sbx = await create('tags-from-tag', {}, `${name}:v1`)
  out.fromTagTemplateId = (await sbx.getInfo()).templateId
  out.fromTagMark = await sbx.files.read('/home/user/mark.txt')
  out.fromTagKilled = await sbx.kill()
  out.fromUpper = await failure(create('tags-from-upper', {}, `${name}:STABLE`).then(s => s.kill()))

  out.createUnknown = await failure(create('tags-unknown', {}, `${name}:nope`))
  out.assignUnknown = await failure(Template.assignTags(`${name}:nope`, 'v2'))
  out.assignDefault = await failure(Template.assignTags(name, 'default'))
  out.getTagsUnknown = await failure(Template.getTags(`no-such-template-${marker}`))

  await Template.removeTags(name, 'stable')
  out.tagsAfterRemove = (await Template.getTags(tid)).map(t => t.tag)
  out.createRemoved = await failure(create('tags-removed', {}, `${name}:stable`))
  out.removeAgain = await failure(Template.removeTags(name, 'stable'))

  out.srcKilled = await src.kill()
  out.deleted = await Sandbox.deleteSnapshot(snap.snapshotId)
  out.getTagsAfterDelete = await failure(Template.getTags(name))
}

if (!cases[which]) {
  console.error(`usage: node sdk_parity.mjs <${Object.keys(cases).join('|')}>`)
  process.exit(2)
}
let failed = false
try {
  await cases[which]()
} catch (e) {
  failed = true
  out.error = e && e.stack ? e.stack : String(e)
} finally {
  // Snapshots in use cannot be deleted: kill first.
  out.cleanup = []
  for (const id of out.created) {
    await Sandbox.kill(id).catch(e => out.cleanup.push(`kill ${id}: ${e.message}`))
  }
  for (const id of out.snapshots) {
    await Sandbox.deleteSnapshot(id).catch(e => out.cleanup.push(`deleteSnapshot ${id}: ${e.message}`))
  }
}
console.log(JSON.stringify(out))
process.exit(failed ? 1 : 0)
