// WalletServices for @bsv/wallet-toolbox over a Farebox devnet (gateway/devnet/http.py).
//
// The toolbox's own `Services` talks to WhatsOnChain, ARC and Chaintracks on
// mainnet/testnet, and its `MockServices` is a chain of its own: neither can
// see the devnet Farebox verifies against. This adapter answers the wallet
// from the devnet's HTTP API:
//   chain tracker (merkle roots, height)  GET /merkle-root/verify, /headers/tip
//   block headers                         GET /headers/{height}
//   broadcast                             POST /v1/tx (BEEF), then GET /v1/tx/{txid}
//   raw transactions, BEEF, merkle paths  GET /beef/{txid}, GET /v1/tx/{txid}
//   UTXO status                           GET /v1/bsv/test/script/{hash}/unspent
// Stubbed, because nothing the tests do depends on them: script history
// (empty), nLockTime finality (always final), exchange rates (fixed), the
// call history (empty), header lookup by hash (a walk down from the tip).

import { sdk } from './sdk.mjs'

const { Beef, Hash, MerklePath, Utils } = sdk

const NAME = 'farebox-devnet'

function headerFields (json) {
  // /headers/{height}: {height, hash, prevHash, merkleRoot, time, header (80 bytes hex)}
  const raw = Utils.toArray(json.header, 'hex')
  const reader = new Utils.Reader(raw)
  const version = reader.readUInt32LE()
  reader.read(64) // previous hash and merkle root, given in display order by the devnet
  const time = reader.readUInt32LE()
  const bits = reader.readUInt32LE()
  const nonce = reader.readUInt32LE()
  return {
    version,
    previousHash: json.prevHash,
    merkleRoot: json.merkleRoot,
    time,
    bits,
    nonce,
    height: json.height,
    hash: json.hash
  }
}

export class DevnetServices {
  constructor (url, { chain = 'test', log = () => {} } = {}) {
    this.url = url.replace(/\/$/, '')
    this.chain = chain
    this.log = log
    this.posted = [] // txids the wallet broadcast, in order (for the tests)
  }

  async #get (path) {
    const r = await fetch(this.url + path)
    if (r.status === 404) return null
    if (!r.ok) throw new Error(`devnet GET ${path}: ${r.status} ${await r.text()}`)
    return await r.json()
  }

  // --- chain tracking -----------------------------------------------------------------

  async getChainTracker () {
    return {
      isValidRootForHeight: async (root, height) => {
        const q = `?root=${encodeURIComponent(root)}&height=${height}`
        const answer = await this.#get(`/merkle-root/verify${q}`)
        this.log('isValidRootForHeight', height, answer?.valid)
        return answer?.valid === true
      },
      currentHeight: async () => await this.getHeight()
    }
  }

  async getHeight () {
    return (await this.#get('/headers/tip')).height
  }

  async getHeaderForHeight (height) {
    const json = await this.#get(`/headers/${height}`)
    if (json == null) throw new Error(`the devnet has no block at height ${height}`)
    return Utils.toArray(json.header, 'hex')
  }

  async #blockHeader (height) {
    const json = await this.#get(`/headers/${height}`)
    return json == null ? undefined : headerFields(json)
  }

  async tipHeader () {
    return await this.#blockHeader(await this.getHeight())
  }

  async hashToHeader (hash) {
    // The devnet has no lookup by hash; it is small, so walk down from the tip.
    for (let height = await this.getHeight(); height >= 0; height--) {
      const header = await this.#blockHeader(height)
      if (header?.hash === hash) return header
    }
    throw new Error(`the devnet has no block ${hash}`)
  }

  // --- transactions -------------------------------------------------------------------

  async postBeef (beef, txids) {
    const body = beef.toBinary()
    const r = await fetch(`${this.url}/v1/tx`, {
      method: 'POST',
      headers: { 'Content-Type': 'application/octet-stream' },
      body: new Uint8Array(body)
    })
    const answer = await r.json().catch(() => ({}))
    this.log('postBeef', txids, r.status, answer.txStatus ?? answer.extraInfo)
    const txidResults = []
    for (const txid of txids) {
      // The devnet, like ARC, answers for the BEEF's last transaction: ask about each.
      const status = r.ok ? await this.#get(`/v1/tx/${txid}`) : null
      const txStatus = status?.txStatus
      if (txStatus === 'SEEN_ON_NETWORK' || txStatus === 'MINED') {
        this.posted.push(txid)
        txidResults.push({ txid, status: 'success', blockHash: status.blockHash ?? undefined, blockHeight: status.blockHeight ?? undefined })
      } else if (txStatus === 'DOUBLE_SPEND_ATTEMPTED') {
        txidResults.push({ txid, status: 'error', doubleSpend: true, competingTxs: status.competingTxs ?? [] })
      } else {
        txidResults.push({ txid, status: 'error', data: { status: String(r.status), detail: answer.extraInfo ?? txStatus ?? 'unknown' } })
      }
    }
    const ok = txidResults.every((t) => t.status === 'success')
    return [{ name: NAME, status: ok ? 'success' : 'error', txidResults }]
  }

  async getBeefForTxid (txid) {
    const json = await this.#get(`/beef/${txid}`)
    if (json == null) throw new Error(`the devnet does not know ${txid}`)
    return Beef.fromString(json.beef, 'hex')
  }

  async getRawTx (txid) {
    const json = await this.#get(`/beef/${txid}`)
    if (json == null) return { txid, name: NAME }
    const found = Beef.fromString(json.beef, 'hex').findTxid(txid)
    return { txid, name: NAME, rawTx: found?.rawTx ?? found?.tx?.toBinary() }
  }

  async getMerklePath (txid) {
    const status = await this.#get(`/v1/tx/${txid}`)
    if (status == null || !status.merklePath) return { name: NAME, notes: [] }
    return {
      name: NAME,
      merklePath: MerklePath.fromHex(status.merklePath),
      header: await this.#blockHeader(status.blockHeight),
      notes: []
    }
  }

  async getStatusForTxids (txids) {
    const tip = await this.getHeight()
    const results = []
    for (const txid of txids) {
      const s = await this.#get(`/v1/tx/${txid}`)
      if (s == null || s.txStatus === 'REJECTED') results.push({ txid, status: 'unknown', depth: undefined })
      else if (s.txStatus === 'MINED') results.push({ txid, status: 'mined', depth: tip - s.blockHeight + 1 })
      else results.push({ txid, status: 'known', depth: 0 })
    }
    return { name: NAME, status: 'success', results }
  }

  // --- outputs ------------------------------------------------------------------------

  hashOutputScript (script) {
    // WhatsOnChain's script hash: SHA-256 of the locking script, byte-reversed hex.
    return Utils.toHex(Hash.sha256(Utils.toArray(script, 'hex')).reverse())
  }

  async getUtxoStatus (output, outputFormat, outpoint) {
    let hash
    if (outputFormat === 'script' || outputFormat == null) hash = this.hashOutputScript(output)
    else if (outputFormat === 'hashBE') hash = output
    else hash = Utils.toHex(Utils.toArray(output, 'hex').reverse()) // hashLE
    const unspent = (await this.#get(`/v1/bsv/test/script/${hash}/unspent`)) ?? []
    const details = unspent.map((u) => ({ txid: u.tx_hash, index: u.tx_pos, satoshis: u.value, height: u.height }))
    let isUtxo = details.length > 0
    if (outpoint != null) {
      const [txid, vout] = outpoint.split('.')
      isUtxo = details.some((d) => d.txid === txid && d.index === Number(vout))
    }
    return { name: NAME, status: 'success', isUtxo, details }
  }

  async isUtxo (output) {
    const script = Utils.toHex(output.lockingScript)
    const r = await this.getUtxoStatus(script, 'script', `${output.txid}.${output.vout}`)
    return r.isUtxo === true
  }

  // --- stubs --------------------------------------------------------------------------

  async getScriptHashHistory (hash) {
    return { name: NAME, status: 'success', history: [] }
  }

  async nLockTimeIsFinal (txOrLockTime) {
    return true
  }

  async getBsvExchangeRate () {
    return 50 // USD per BSV, fixed: no feed is reachable from the tests
  }

  async getFiatExchangeRate (currency, base) {
    return 1
  }

  getServicesCallHistory (reset) {
    const empty = () => ({ serviceName: NAME, historyByProvider: {} })
    return {
      version: 2,
      getMerklePath: empty(),
      getRawTx: empty(),
      postBeef: empty(),
      getUtxoStatus: empty(),
      getStatusForTxids: empty(),
      getScriptHashHistory: empty(),
      updateFiatExchangeRates: empty()
    }
  }
}
