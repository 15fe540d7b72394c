// The toolbox wallet both toolbox.mjs (a client) and control_server.mjs (the
// official BRC-105 server) run: @bsv/wallet-toolbox's own `Wallet` with
// `WalletStorageManager` over `StorageKnex` on better-sqlite3 `:memory:`, its
// chain services an adapter over the Farebox devnet (devnet_services.mjs).
// Everything stays in the calling process: nothing is written to disk and no
// public network is used.

import { DevnetServices } from './devnet_services.mjs'
import { knex as knexModule, sdk, toolbox } from './sdk.mjs'

const { KeyDeriver, PrivateKey, Random, Utils } = sdk
const { Monitor, Wallet, WalletStorageManager, StorageKnex } = toolbox
const makeKnex = knexModule.knex ?? knexModule

export const BRC29 = [2, '3241645161d8']
export const CHAIN = 'test' // the toolbox knows 'main' and 'test'; only scripts matter on the devnet

// -> {wallet, services, identityKey, knex, monitor}. `log(...args)` receives the
// services' diagnostics; `destroy()` on the result's wallet and knex when done.
export async function makeWallet (devnetUrl, rootKeyHex, { log = () => {} } = {}) {
  const rootKey = rootKeyHex ? PrivateKey.fromHex(rootKeyHex) : PrivateKey.fromRandom()
  const identityKey = rootKey.toPublicKey().toString()
  const services = new DevnetServices(devnetUrl, { chain: CHAIN, log })
  const knex = makeKnex({
    client: 'better-sqlite3',
    connection: { filename: ':memory:' },
    useNullAsDefault: true,
    pool: { min: 1, max: 1, idleTimeoutMillis: 2 ** 31 - 1 } // one connection: one in-memory database
  })
  const storage = new StorageKnex({
    chain: CHAIN,
    knex,
    commissionSatoshis: 0,
    commissionPubKeyHex: undefined,
    feeModel: { model: 'sat/kb', value: 1 }
  })
  await storage.migrate('farebox-interop', Utils.toHex(Random(33)))
  await storage.makeAvailable()
  storage.setServices(services)
  const manager = new WalletStorageManager(identityKey, storage)
  await manager.makeAvailable()
  // The toolbox's monitor, never started: its tasks are run one at a time on request.
  const monitor = new Monitor({
    chain: CHAIN,
    services,
    storage: manager,
    msecsWaitPerMerkleProofServiceReq: 500,
    taskRunWaitMsecs: 5000,
    abandonedMsecs: 5 * 60 * 1000,
    unprovenAttemptsLimitTest: 100,
    unprovenAttemptsLimitMain: 144,
    maxRebroadcastAttempts: 0,
    chaintracks: undefined,
    startupTaskMode: 'none'
  })
  const wallet = new Wallet({ chain: CHAIN, keyDeriver: new KeyDeriver(rootKey), storage: manager, services, monitor })
  return { wallet, services, identityKey, knex, monitor }
}
