// Build one BRC-121 payment with the official TypeScript SDK (@bsv/sdk).
//
// Reads one JSON object from stdin:
//   { serverPublicKey: hex, clientPrivateKey: hex,
//     parentBeefHex: BEEF hex of a mined transaction paying the client at parentVout,
//     parentVout, satoshis, timeMs: "<unix ms>",
//     beefVersion?: 1 | 2 (default 1: tx.toAtomicBEEF(); 2: Beef.toBinaryAtomic, as wallets send) }
// Writes one JSON object to stdout: the BRC-121 headers (x-bsv-beef, x-bsv-sender,
// x-bsv-nonce, x-bsv-time, x-bsv-vout) plus "txid" and "payee" (the derived key, hex).
//
// Everything is done by @bsv/sdk, the way a BRC-100 wallet does it (compare
// AuthFetch.createPaymentContext in the SDK): the payee key comes from the key
// deriver for BRC-29 ([2, '3241645161d8'], keyID "<prefix> <suffix>", counterparty
// = the server). No network access: the fee model is a fixed SatoshisPerKilobyte.

import './webcrypto.mjs' // before the SDK: node 18 has no global WebCrypto

import {
  Beef,
  KeyDeriver,
  P2PKH,
  PrivateKey,
  ProtoWallet,
  PublicKey,
  Random,
  SatoshisPerKilobyte,
  Transaction,
  Utils
} from '@bsv/sdk'

const BRC29 = [2, '3241645161d8']

function fail (message) {
  process.stderr.write(`pay.mjs: ${message}\n`)
  process.exit(2)
}

function check (condition, message) {
  if (!condition) fail(message)
}

async function readStdin () {
  const chunks = []
  for await (const chunk of process.stdin) chunks.push(chunk)
  return Buffer.concat(chunks).toString('utf8')
}

async function main () {
  const input = JSON.parse(await readStdin())
  const { serverPublicKey, clientPrivateKey, parentBeefHex, parentVout, satoshis, timeMs } = input
  const beefVersion = input.beefVersion ?? 1
  check(typeof serverPublicKey === 'string', 'serverPublicKey (hex) is required')
  check(typeof clientPrivateKey === 'string', 'clientPrivateKey (hex) is required')
  check(typeof parentBeefHex === 'string', 'parentBeefHex is required')
  check(Number.isInteger(parentVout) && parentVout >= 0, 'parentVout must be an output index')
  check(Number.isInteger(satoshis) && satoshis > 0, 'satoshis must be a positive integer')
  check(typeof timeMs === 'string' && /^[0-9]+$/.test(timeMs), 'timeMs must be a decimal string')
  check(beefVersion === 1 || beefVersion === 2, 'beefVersion must be 1 or 2')

  const client = PrivateKey.fromHex(clientPrivateKey)
  const server = PublicKey.fromString(serverPublicKey)

  // BRC-29 derivation: prefix is a random nonce, suffix is base64 of the ASCII time.
  const prefix = Utils.toBase64(Random(16))
  const suffix = Utils.toBase64(Utils.toArray(timeMs, 'utf8'))
  const keyID = `${prefix} ${suffix}`

  // The wallet route: a KeyDeriver (what ProtoWallet / wallet-toolbox run).
  const deriver = new KeyDeriver(client)
  const payee = deriver.derivePublicKey(BRC29, keyID, server, false)
  // ... the same through the wallet interface, exactly as AuthFetch asks for it.
  const wallet = new ProtoWallet(client)
  const { publicKey: viaWallet } = await wallet.getPublicKey({
    protocolID: BRC29,
    keyID,
    counterparty: serverPublicKey
  })
  // ... and the raw BRC-42 route with an explicit invoice number.
  const viaChild = server.deriveChild(client, `2-3241645161d8-${prefix} ${suffix}`)
  check(payee.toString() === viaWallet, `KeyDeriver ${payee.toString()} != ProtoWallet ${viaWallet}`)
  check(payee.toString() === viaChild.toString(),
    `KeyDeriver ${payee.toString()} != PublicKey.deriveChild ${viaChild.toString()}`)

  // The parent: a mined transaction (with its merkle path) paying the client.
  const parent = Transaction.fromBEEF(Utils.toArray(parentBeefHex, 'hex'))
  check(parent.merklePath != null, 'the parent BEEF carries no merkle path for the parent')
  const funding = parent.outputs[parentVout]
  check(funding != null, `the parent has no output ${parentVout}`)
  const clientLock = new P2PKH().lock(client.toPublicKey().toHash())
  check(funding.lockingScript.toHex() === clientLock.toHex(),
    'the parent output does not pay the client key (P2PKH)')

  const tx = new Transaction()
  tx.addInput({
    sourceTransaction: parent,
    sourceOutputIndex: parentVout,
    unlockingScriptTemplate: new P2PKH().unlock(client)
  })
  tx.addOutput({ lockingScript: new P2PKH().lock(payee.toHash()), satoshis })
  tx.addOutput({ lockingScript: clientLock, change: true })
  await tx.fee(new SatoshisPerKilobyte(1))
  await tx.sign()
  check(await tx.verify('scripts only'), 'the SDK does not verify its own transaction')

  const txid = tx.id('hex')
  let atomic
  if (beefVersion === 1) {
    atomic = tx.toAtomicBEEF() // 0x01010101 <txid> + BEEF V1 (0100beef)
  } else {
    const beef = new Beef() // BEEF V2 (0200beef), what wallet createAction returns
    beef.mergeTransaction(tx)
    atomic = beef.toBinaryAtomic(txid)
  }
  // Read it back with the SDK's own strict Atomic BEEF reader.
  check(Transaction.fromAtomicBEEF(atomic).id('hex') === txid, 'Atomic BEEF does not round-trip')

  process.stdout.write(JSON.stringify({
    'x-bsv-beef': Utils.toBase64(atomic),
    'x-bsv-sender': client.toPublicKey().toString(),
    'x-bsv-nonce': prefix,
    'x-bsv-time': timeMs,
    'x-bsv-vout': '0',
    txid,
    payee: payee.toString()
  }) + '\n')
}

main().catch((err) => fail(err?.stack ?? String(err)))
