// The official BRC-105 server, as the control for tests/test_authfetch.py: express
// with @bsv/auth-express-middleware (BRC-103/104 mutual authentication) and
// @bsv/payment-express-middleware (BRC-105 payments), exactly as their READMEs
// wire them. If AuthFetch cannot pay this server, the harness is at fault, not
// Farebox.
//
//   node control_server.mjs <devnet URL> [price in satoshis, default 100]
//
// Its wallet is a toolbox wallet on in-memory SQLite over the same devnet
// (wallet.mjs), so the payment middleware's internalizeAction of a client's
// payment runs offline against the chain the client paid on.
// Routes (all behind the auth middleware, which refuses unauthenticated requests):
//   GET /free                free: {free: true, path, identityKey}
//   GET /priced, /priced/:item   `price` satoshis a request (the payment middleware
//                            has no grants: every request is paid) ->
//                            {path, identityKey, satoshisPaid, accepted, serverBalance}
// When listening, one JSON line on stdout: {"url", "identityKey", "price"}. Stops
// when stdin closes. Everything else goes to stderr.

import { createRequire } from 'node:module'
import readline from 'node:readline'

import { makeWallet } from './wallet.mjs'

const require = createRequire(import.meta.url)
// CommonJS builds, so that they share sdk.mjs's copy of @bsv/sdk with the toolbox.
const express = require('express')
const { createAuthMiddleware } = require('@bsv/auth-express-middleware')
const { createPaymentMiddleware } = require('@bsv/payment-express-middleware')

const verbose = process.env.TOOLBOX_VERBOSE === '1'
const out = process.stdout.write.bind(process.stdout)
for (const level of ['log', 'info', 'debug']) console[level] = (...args) => console.error(...args)

function log (...args) {
  if (verbose) process.stderr.write(`control_server.mjs: ${args.map((a) => typeof a === 'string' ? a : JSON.stringify(a)).join(' ')}\n`)
}

async function main () {
  const [devnetUrl, priceArg = '100'] = process.argv.slice(2)
  const price = Number(priceArg)
  if (!devnetUrl || !Number.isSafeInteger(price) || price <= 0) {
    process.stderr.write('usage: node control_server.mjs <devnet URL> [price in satoshis]\n')
    process.exit(2)
  }
  const { wallet, identityKey, knex } = await makeWallet(devnetUrl, undefined, { log })

  const app = express()
  app.use(express.json())
  app.use((req, res, next) => {
    log(req.method, req.originalUrl, req.headers['x-bsv-payment'] ? '(with x-bsv-payment)' : '')
    next()
  })
  app.use(createAuthMiddleware({ wallet, allowUnauthenticated: false, logger: console, logLevel: verbose ? 'warn' : 'error' }))
  app.use(createPaymentMiddleware({
    wallet,
    calculateRequestPrice: (req) => (req.path === '/priced' || req.path.startsWith('/priced/')) ? price : 0
  }))
  app.get('/free', (req, res) => {
    res.json({ free: true, path: req.path, identityKey: req.auth.identityKey })
  })
  const priced = async (req, res) => {
    res.json({
      path: req.path,
      identityKey: req.auth.identityKey,
      satoshisPaid: req.payment?.satoshisPaid,
      accepted: req.payment?.accepted,
      serverBalance: await wallet.balance()
    })
  }
  app.get('/priced', priced)
  app.get('/priced/:item', priced)

  const server = app.listen(0, '127.0.0.1', () => {
    const { port } = server.address()
    out(JSON.stringify({ url: `http://127.0.0.1:${port}`, identityKey, price }) + '\n')
  })
  server.on('error', (err) => {
    process.stderr.write(`control_server.mjs: ${err?.stack ?? String(err)}\n`)
    process.exit(2)
  })

  const stop = async () => {
    server.close()
    server.closeAllConnections?.()
    await wallet.destroy().catch(() => {})
    await knex.destroy().catch(() => {})
    process.exit(0)
  }
  readline.createInterface({ input: process.stdin }).on('close', stop)
  process.on('SIGTERM', stop)
}

main().catch((err) => {
  process.stderr.write(`control_server.mjs: ${err?.stack ?? String(err)}\n`)
  process.exit(2)
})
