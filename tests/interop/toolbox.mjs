// A real BRC-100 wallet (@bsv/wallet-toolbox) on a Farebox devnet, for tests/test_wallet_toolbox.py.
//
//   node toolbox.mjs <devnet URL> [root key hex]
//
// The wallet is the toolbox's own `Wallet` with `WalletStorageManager` over
// `StorageKnex` on better-sqlite3 `:memory:` (wallet.mjs); only its chain services
// are an adapter (devnet_services.mjs), because the devnet is no public network. Its
// state lives in this process, so a test talks to one process for all its steps:
// JSON lines on stdin, one answer line per request on stdout:
//   -> {"id": 1, "op": "fund", "satoshis": 50000}
//   <- {"id": 1, "ok": true, "result": {...}}    or    {"id": 1, "ok": false, "error": "..."}
// Operations:
//   identity                 {identityKey}
//   balance                  {satoshis}: spendable, in the default basket
//   fund {satoshis}          a devnet faucet payment to one of the wallet's BRC-29 keys,
//                            taken in with internalizeAction -> {txid, satoshis, balance}
//   pay {url, method?, headers?, body?}
//                            a request; on 402, a BRC-121 payment by createAction and the
//                            paid retry -> {status, headers, body, paid: {txid, headers, ...}}
//   receive {beef, vout, prefix, suffix, sender}
//                            a BRC-29 payment (Atomic BEEF as base64) taken in with
//                            internalizeAction -> {accepted, balanceBefore, balance}
//   sendWaiting              the toolbox monitor's TaskSendWaiting, run once: broadcasts what
//                            the wallet holds unsent -> {report, posted}
//   checkForProofs           the monitor's TaskCheckForProofs, run once: merkle paths for
//                            mined transactions, which become 'completed' -> {report}
//   actions                  listActions (labels, status, satoshis), newest last
//   serve {port?}            the wallet's BRC-100 calls over HTTP, HTTPWalletJSON-style
//                            (POST /<call> with the args as JSON; CORS open) -> {url}
//   httpCalls                the calls served over HTTP: [{call, args, originator, txid?, error?}]
//   posted                   txids the wallet broadcast itself
//   authfetch {url, method?, headers?, body?, pay?, delayedBroadcast?, timeoutMs?}
//                            a request through the SDK's AuthFetch with this wallet (one
//                            AuthFetch a process: sessions persist); it pays BRC-105 402s
//                            itself -> {status, headers, body, paid, txids, payments, wire}
//   brc105payment {serverIdentityKey, derivationPrefix, satoshis, wrongOutput?, outputIndex?}
//                            an x-bsv-payment value built as AuthFetch builds one, for any
//                            amount/payee/position -> {header, txid, vout, payee, derivationSuffix}
//                            (both in brc105.mjs, which says more)
// A failed op's answer may carry `details` (authfetch: what went over the wire).
// Diagnostics go to stderr; stdout carries only answers.

import http from 'node:http'
import readline from 'node:readline'

import { authfetch, brc105payment } from './brc105.mjs'
import { TaskCheckForProofs, TaskSendWaiting, sdk } from './sdk.mjs'
import { BRC29, makeWallet } from './wallet.mjs'

const { P2PKH, PrivateKey, PublicKey, Random, Transaction, Utils } = sdk
const verbose = process.env.TOOLBOX_VERBOSE === '1'

// stdout carries answers only: what libraries print (AuthFetch logs each paid
// attempt with console.info, which is stdout) goes to stderr.
for (const level of ['log', 'info', 'debug']) console[level] = (...args) => console.error(...args)

function log (...args) {
  if (verbose) process.stderr.write(`toolbox.mjs: ${args.map((a) => typeof a === 'string' ? a : JSON.stringify(a)).join(' ')}\n`)
}

// --- the wallet (wallet.mjs) ----------------------------------------------------------------

async function balance (wallet) {
  return await wallet.balance()
}

function randomBase64 (n) {
  return Utils.toBase64(Random(n))
}

// --- operations -----------------------------------------------------------------------------

async function fund (ctx, { satoshis }) {
  const { wallet, services } = ctx
  // The faucet stands in for a sender: any key will do, the wallet learns it
  // from the remittance and derives the same BRC-29 key.
  const sender = PrivateKey.fromRandom().toPublicKey().toString()
  const derivationPrefix = randomBase64(8)
  const derivationSuffix = randomBase64(8)
  const { publicKey } = await wallet.getPublicKey({
    protocolID: BRC29,
    keyID: `${derivationPrefix} ${derivationSuffix}`,
    counterparty: sender,
    forSelf: true
  })
  const r = await fetch(`${services.url}/faucet`, {
    method: 'POST',
    headers: { 'Content-Type': 'application/json' },
    body: JSON.stringify({ pubkey: publicKey, satoshis })
  })
  const coin = await r.json()
  if (!r.ok) throw new Error(`faucet: ${r.status} ${coin.extraInfo ?? JSON.stringify(coin)}`)
  const tx = Transaction.fromBEEF(Utils.toArray(coin.beef, 'hex'))
  const result = await wallet.internalizeAction({
    tx: tx.toAtomicBEEF(),
    outputs: [{
      outputIndex: coin.vout,
      protocol: 'wallet payment',
      paymentRemittance: { derivationPrefix, derivationSuffix, senderIdentityKey: sender }
    }],
    description: 'Devnet faucet funding',
    labels: ['faucet']
  })
  if (!result.accepted) throw new Error('internalizeAction did not accept the faucet payment')
  return { txid: coin.txid, satoshis, balance: await balance(wallet) }
}

function headersObject (headers) {
  const out = {}
  headers.forEach((value, name) => { out[name] = value })
  return out
}

async function send (url, method, headers, body) {
  const r = await fetch(url, { method, headers, body: body ?? undefined, redirect: 'manual' })
  return { status: r.status, headers: headersObject(r.headers), body: await r.text() }
}

async function pay (ctx, { url, method = 'GET', headers = {}, body = null }) {
  const { wallet, identityKey } = ctx
  const first = await send(url, method, headers, body)
  if (first.status !== 402) return { ...first, paid: null }
  const satoshis = Number(first.headers['x-bsv-sats'])
  const server = first.headers['x-bsv-server']
  if (!Number.isSafeInteger(satoshis) || satoshis <= 0 || !server) {
    throw new Error(`a 402 without BRC-121 terms: ${JSON.stringify(first.headers)}`)
  }
  // BRC-121: the prefix is a fresh nonce, the suffix base64 of the time string;
  // the payee is the BRC-29 key the wallet derives with the server as counterparty.
  const time = String(Date.now())
  const prefix = randomBase64(16)
  const suffix = Utils.toBase64(Utils.toArray(time, 'utf8'))
  const { publicKey: payee } = await wallet.getPublicKey({
    protocolID: BRC29,
    keyID: `${prefix} ${suffix}`,
    counterparty: server
  })
  const lockingScript = new P2PKH().lock(PublicKey.fromString(payee).toHash()).toHex()
  const action = await wallet.createAction({
    description: `Payment for ${new URL(url).pathname}`.slice(0, 50),
    outputs: [{
      lockingScript,
      satoshis,
      outputDescription: 'BRC-121 payment',
      customInstructions: JSON.stringify({ derivationPrefix: prefix, derivationSuffix: suffix, payee: server })
    }],
    labels: ['brc121'],
    options: { randomizeOutputs: false, acceptDelayedBroadcast: false }
  })
  if (action.tx == null) throw new Error(`createAction returned no transaction: ${JSON.stringify(action)}`)
  const paidHeaders = {
    'x-bsv-beef': Utils.toBase64(action.tx),
    'x-bsv-sender': identityKey,
    'x-bsv-nonce': prefix,
    'x-bsv-time': time,
    'x-bsv-vout': '0'
  }
  const second = await send(url, method, { ...headers, ...paidHeaders }, body)
  return {
    ...second,
    paid: { txid: action.txid, satoshis, payee, server, headers: paidHeaders, sendWithResults: action.sendWithResults ?? null }
  }
}

async function receive (ctx, { beef, vout, prefix, suffix, sender, description = 'Payment from Farebox' }) {
  const { wallet } = ctx
  const before = await balance(wallet)
  const result = await wallet.internalizeAction({
    tx: Utils.toArray(beef, 'base64'),
    outputs: [{
      outputIndex: vout,
      protocol: 'wallet payment',
      paymentRemittance: { derivationPrefix: prefix, derivationSuffix: suffix, senderIdentityKey: sender }
    }],
    description,
    labels: ['received']
  })
  return { accepted: result.accepted, balanceBefore: before, balance: await balance(wallet) }
}

async function sendWaiting (ctx) {
  // What a running monitor does every few seconds: broadcast what is waiting
  // (an incoming BRC-29 payment internalizeAction stored unsent, delayed
  // broadcasts). Here with no minimum age, once.
  const task = new TaskSendWaiting(ctx.monitor, 0, 0)
  await new Promise((resolve) => setTimeout(resolve, 5)) // older than "now"
  const report = await task.runTask()
  return { report, posted: ctx.services.posted }
}

async function checkForProofs (ctx) {
  // The monitor's proof collection: merkle paths for what it broadcast, up to
  // the tip (which its TaskNewHeader would have learnt from a headers service).
  ctx.monitor.lastNewHeader = await ctx.services.tipHeader()
  const report = await new TaskCheckForProofs(ctx.monitor).runTask()
  return { report }
}

async function actions (ctx) {
  const listed = await ctx.wallet.listActions({ labels: [], includeLabels: true, limit: 100 })
  return listed.actions.map((a) => ({
    txid: a.txid, status: a.status, satoshis: a.satoshis, description: a.description, labels: a.labels
  }))
}

// --- BRC-100 over HTTP (what the paywall's button calls) -------------------------------------

// The WalletInterface calls a page may make. The transport is a stand-in for a
// desktop wallet's local port; every call goes to the real toolbox Wallet.
const CALLS = new Set([
  'getPublicKey', 'createAction', 'signAction', 'abortAction', 'listActions', 'internalizeAction',
  'listOutputs', 'relinquishOutput', 'revealCounterpartyKeyLinkage', 'revealSpecificKeyLinkage',
  'encrypt', 'decrypt', 'createHmac', 'verifyHmac', 'createSignature', 'verifySignature',
  'isAuthenticated', 'waitForAuthentication', 'getHeight', 'getHeaderForHeight', 'getNetwork', 'getVersion'
])

function originatorOf (req) {
  try {
    return req.headers.origin ? new URL(req.headers.origin).hostname : undefined
  } catch {
    return undefined
  }
}

function serve (ctx, { port = 0, host = '127.0.0.1' }) {
  const calls = ctx.httpCalls
  const server = http.createServer(async (req, res) => {
    const cors = {
      'Access-Control-Allow-Origin': '*',
      'Access-Control-Allow-Methods': 'POST, OPTIONS',
      'Access-Control-Allow-Headers': 'Content-Type',
      'Access-Control-Allow-Private-Network': 'true'
    }
    if (req.method === 'OPTIONS') {
      res.writeHead(204, cors).end()
      return
    }
    const call = (req.url ?? '').replace(/^\//, '').split('?')[0]
    const answer = (status, body) => {
      res.writeHead(status, { ...cors, 'Content-Type': 'application/json' }).end(JSON.stringify(body))
    }
    if (req.method !== 'POST' || !CALLS.has(call)) {
      answer(404, { isError: true, name: 'ERR_NOT_FOUND', message: `no wallet call ${req.method} /${call}` })
      return
    }
    const chunks = []
    for await (const chunk of req) chunks.push(chunk)
    let args
    try {
      args = JSON.parse(Buffer.concat(chunks).toString('utf8') || '{}')
    } catch {
      answer(400, { isError: true, name: 'ERR_INVALID_PARAMETER', message: 'the body is not JSON' })
      return
    }
    const record = { call, args, originator: originatorOf(req) }
    calls.push(record)
    try {
      const result = await ctx.wallet[call](args, record.originator)
      log('http', call, 'ok')
      record.txid = result?.txid
      answer(200, result)
    } catch (err) {
      log('http', call, 'failed', err?.message)
      record.error = err?.message ?? String(err)
      answer(400, { isError: true, name: err?.name ?? 'Error', code: err?.code, message: record.error })
    }
  })
  return new Promise((resolve, reject) => {
    server.once('error', reject)
    server.listen(port, host, () => {
      ctx.httpServer = server
      resolve({ url: `http://${host}:${server.address().port}` })
    })
  })
}

// --- the request loop -----------------------------------------------------------------------

const OPS = {
  identity: async (ctx) => ({ identityKey: ctx.identityKey }),
  balance: async (ctx) => ({ satoshis: await balance(ctx.wallet) }),
  fund,
  pay,
  receive,
  actions,
  sendWaiting,
  checkForProofs,
  serve,
  httpCalls: async (ctx) => ctx.httpCalls,
  posted: async (ctx) => ctx.services.posted,
  authfetch,
  brc105payment
}

async function main () {
  const [devnetUrl, rootKeyHex] = process.argv.slice(2)
  if (!devnetUrl) {
    process.stderr.write('usage: node toolbox.mjs <devnet URL> [root key hex]\n')
    process.exit(2)
  }
  const ctx = { ...(await makeWallet(devnetUrl, rootKeyHex, { log })), httpCalls: [], httpServer: null, brc105: null, log }
  const write = (obj) => process.stdout.write(JSON.stringify(obj) + '\n')
  write({ id: 0, ok: true, result: { ready: true, identityKey: ctx.identityKey } })

  // One request at a time, in order: the wallet's state is what each step builds on.
  const lines = readline.createInterface({ input: process.stdin, crlfDelay: Infinity })
  for await (const line of lines) {
    if (!line.trim()) continue
    let request
    try {
      request = JSON.parse(line)
    } catch {
      write({ id: null, ok: false, error: 'not JSON' })
      continue
    }
    const op = OPS[request.op]
    if (op == null) {
      write({ id: request.id, ok: false, error: `unknown op ${request.op}` })
      continue
    }
    try {
      write({ id: request.id, ok: true, result: await op(ctx, request) })
    } catch (err) {
      log(request.op, 'failed', err?.stack ?? String(err))
      write({ id: request.id, ok: false, error: `${err?.name ?? 'Error'}: ${err?.message ?? String(err)}`, code: err?.code, details: err?.details })
    }
  }
  // stdin closed: the test is done with this wallet.
  ctx.httpServer?.close()
  await ctx.wallet.destroy().catch(() => {})
  await ctx.knex.destroy().catch(() => {})
  process.exit(0)
}

main().catch((err) => {
  process.stderr.write(`toolbox.mjs: ${err?.stack ?? String(err)}\n`)
  process.exit(2)
})
