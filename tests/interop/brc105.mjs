// BRC-105 (payments over BRC-103/104 mutual authentication) from the client's
// side, for toolbox.mjs: requests through the SDK's own `AuthFetch` with the
// toolbox wallet as its wallet, and `x-bsv-payment` values built the way
// AuthFetch builds them, for any amount, payee or output position.
//
//   authfetch {url, method?, headers?, body?, pay?, delayedBroadcast?, timeoutMs?}
//     One request through this process's single AuthFetch (its BRC-103 sessions
//     persist from call to call). On a 402 AuthFetch pays by itself (createAction)
//     and retries, as it always does; `pay: false` hands the 402 back instead.
//     -> {status, headers, body, paid, txids, payments, wire}
//       headers   what AuthFetch gives its caller: the signed x-bsv-* headers and
//                 x-bsv-auth-identity-key (never Content-Type)
//       paid      whether AuthFetch created a payment during this call;
//       txids     the transactions it created (createAction), in order
//       payments  every x-bsv-payment header sent during the call, parsed:
//                 [{header, derivationPrefix, derivationSuffix, txid}]
//       wire      every HTTP exchange with the URL's origin (wire.mjs): handshake,
//                 requests, answers with all their headers and bodies
//     When AuthFetch throws (or the call takes longer than timeoutMs, 30 s by
//     default: an answer whose signature does not verify makes AuthFetch wait
//     for ever, it drops the error), the op fails; the failure carries
//     `details: {wire, txids, payments}`.
//     AuthFetch's createAction asks for the wallet's default (a delayed
//     broadcast, left to a monitor that does not run here): the wallet AuthFetch
//     is given posts the transaction at once instead, as `pay` does for BRC-121,
//     unless `delayedBroadcast: true`, which leaves the broadcast to the server.
//
//   brc105payment {serverIdentityKey, derivationPrefix, satoshis, wrongOutput?, outputIndex?}
//     An x-bsv-payment value as AuthFetch.createPaymentContext builds it:
//     derivationSuffix = createNonce(wallet), the payee the BRC-29 key
//     ([2, '3241645161d8'], keyID "<prefix> <suffix>", counterparty = the
//     server), paid by createAction (posted at once). Any amount; `wrongOutput`
//     pays a random key instead of the BRC-29 one; `outputIndex` n puts n other
//     outputs (each `satoshis` to a random key) before the payment.
//     -> {header (the JSON string), txid, vout, payee, derivationSuffix}
//     Send it with authfetch's `headers: {'x-bsv-payment': header}`: AuthFetch
//     signs the x-bsv-* headers its caller gives it.

import { sdk } from './sdk.mjs'
import { startRecording, stopRecording } from './wire.mjs'
import { BRC29 } from './wallet.mjs'

const { AuthFetch, P2PKH, PrivateKey, PublicKey, Transaction, Utils, createNonce } = sdk

const DEFAULT_TIMEOUT_MS = 30_000

// The wallet handed to AuthFetch: the toolbox wallet itself, except that its
// createAction calls are noted and (unless asked otherwise) broadcast at once.
function authFetchWallet (ctx) {
  const { wallet } = ctx
  return new Proxy(wallet, {
    get (target, prop) {
      if (prop === 'createAction') {
        return async (args, originator) => {
          const options = { ...(args.options ?? {}) }
          if (!ctx.brc105.delayedBroadcast) options.acceptDelayedBroadcast = false
          const result = await target.createAction({ ...args, options }, originator)
          ctx.brc105.created.push(result.txid)
          ctx.log('authfetch createAction', result.txid, options)
          return result
        }
      }
      const value = Reflect.get(target, prop, target)
      return typeof value === 'function' ? value.bind(target) : value
    }
  })
}

function state (ctx) {
  if (ctx.brc105 == null) {
    ctx.brc105 = { created: [], delayedBroadcast: false, authFetch: null }
    ctx.brc105.authFetch = new AuthFetch(authFetchWallet(ctx))
  }
  return ctx.brc105
}

function txidOfAtomicBeef (base64) {
  try {
    return Transaction.fromAtomicBEEF(Utils.toArray(base64, 'base64')).id('hex')
  } catch {
    return null
  }
}

function paymentsSent (wire) {
  const out = []
  for (const exchange of wire) {
    const header = exchange.requestHeaders?.['x-bsv-payment']
    if (header == null) continue
    let parsed = {}
    try {
      parsed = JSON.parse(header)
    } catch {}
    out.push({
      header,
      derivationPrefix: parsed.derivationPrefix ?? null,
      derivationSuffix: parsed.derivationSuffix ?? null,
      txid: typeof parsed.transaction === 'string' ? txidOfAtomicBeef(parsed.transaction) : null
    })
  }
  return out
}

function withTimeout (promise, ms, what) {
  let timer
  const timeout = new Promise((resolve, reject) => {
    timer = setTimeout(() => reject(new Error(`${what}: no answer within ${ms} ms`)), ms)
  })
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer))
}

export async function authfetch (ctx, {
  url, method = 'GET', headers = {}, body = null, pay = true, delayedBroadcast = false, timeoutMs = DEFAULT_TIMEOUT_MS
}) {
  const s = state(ctx)
  const client = s.authFetch
  const createdBefore = s.created.length
  s.delayedBroadcast = delayedBroadcast
  // AuthFetch calls this.handlePaymentAndRetry on a 402; without `pay` the 402 is the answer.
  if (!pay) client.handlePaymentAndRetry = async (_url, _config, response) => response
  const wire = startRecording(new URL(url).origin)
  try {
    const config = { method, headers }
    if (body != null) config.body = body
    const response = await withTimeout(client.fetch(url, config), timeoutMs, `AuthFetch ${method} ${url}`)
    const answerHeaders = {}
    response.headers.forEach((value, name) => { answerHeaders[name] = value })
    const txids = s.created.slice(createdBefore)
    return {
      status: response.status,
      headers: answerHeaders,
      body: await response.text(),
      paid: txids.length > 0,
      txids,
      payments: paymentsSent(wire),
      wire
    }
  } catch (err) {
    err.details = { wire, txids: s.created.slice(createdBefore), payments: paymentsSent(wire), cause: err?.cause?.message }
    throw err
  } finally {
    stopRecording()
    delete client.handlePaymentAndRetry // back to the prototype's
    s.delayedBroadcast = false
  }
}

function p2pkh (publicKeyHex) {
  return new P2PKH().lock(PublicKey.fromString(publicKeyHex).toAddress()).toHex()
}

export async function brc105payment (ctx, { serverIdentityKey, derivationPrefix, satoshis, wrongOutput = false, outputIndex = 0 }) {
  const { wallet } = ctx
  if (!Number.isSafeInteger(satoshis) || satoshis <= 0) throw new Error('satoshis must be a positive integer')
  if (!Number.isSafeInteger(outputIndex) || outputIndex < 0 || outputIndex > 10) throw new Error('outputIndex must be 0..10')
  const derivationSuffix = await createNonce(wallet)
  const { publicKey: brc29Key } = await wallet.getPublicKey({
    protocolID: BRC29,
    keyID: `${derivationPrefix} ${derivationSuffix}`,
    counterparty: serverIdentityKey
  })
  const payee = wrongOutput ? PrivateKey.fromRandom().toPublicKey().toString() : brc29Key
  const others = Array.from({ length: outputIndex }, () => ({
    lockingScript: p2pkh(PrivateKey.fromRandom().toPublicKey().toString()),
    satoshis,
    outputDescription: 'Not the payment'
  }))
  const action = await wallet.createAction({
    description: 'BRC-105 payment, built by the test',
    outputs: [...others, {
      satoshis,
      lockingScript: p2pkh(payee),
      customInstructions: JSON.stringify({ derivationPrefix, derivationSuffix, payee: serverIdentityKey }),
      outputDescription: 'HTTP request payment'
    }],
    labels: ['brc105'],
    options: { randomizeOutputs: false, acceptDelayedBroadcast: false }
  })
  if (action.tx == null) throw new Error(`createAction returned no transaction: ${JSON.stringify(action)}`)
  const header = JSON.stringify({ derivationPrefix, derivationSuffix, transaction: Utils.toBase64(action.tx) })
  return { header, txid: action.txid, vout: outputIndex, payee, derivationSuffix }
}
