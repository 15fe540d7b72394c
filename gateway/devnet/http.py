"""The devnet over HTTP: an ARC-compatible broadcaster, headers, a faucet.

Endpoints (JSON unless noted):
  POST /v1/tx                   ARC broadcast: raw tx, Extended Format or BEEF
  GET  /v1/tx/{txid}            ARC status
  GET  /v1/policy               ARC fee policy
  GET  /headers/tip             {"height", "hash"}
  GET  /headers/{height}        {"height", "hash", "prevHash", "merkleRoot", "time", "header"}
  GET  /merkle-root/verify      ?root=&height= -> {"valid"}
  POST /api/v1/chain/merkleroot/verify, GET /api/v1/chain/tip/longest
                                the Block Headers Service subset bsv-sdk's
                                `BlockHeadersService` chain tracker calls
  GET  /beef/{txid}             {"txid", "beef"}: BEEF V1 hex back to mined ancestors
  POST /faucet                  {"address"|"pubkey", "satoshis"} -> {"txid", "beef", "vout", "satoshis", "blockHeight"}
  POST /mine                    {"blocks": n} -> {"height", "blocks": [{"height", "hash"}]}

Error bodies follow ARC: {"type", "title", "status", "detail", "txid", "extraInfo"},
with ARC's codes:
  400 bad request (body or parameters unusable)   404 unknown transaction/block
  409 generic (mempool full)                      460 not extended format (unused: the devnet knows every parent)
  461 unlocking script invalid                    462 inputs unknown
  463 malformed transaction/BEEF                  465 fee too low, or outputs exceed inputs
  466 an unmined BEEF ancestor conflicts with an accepted transaction
  467 a BEEF's txid-only or proven ancestor is unknown here
  468 a BUMP does not contain its transaction     469 a BUMP's root is not this chain's
A double spend of the subject is not an error: 200 with txStatus
DOUBLE_SPEND_ATTEMPTED and competingTxs, as ARC answers.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import re
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime

from aiohttp import web
from aiohttp.typedefs import Handler
from bsv import MerklePath

from gateway.bsv.beef import Entry
from gateway.bsv.scripts import script_hash
from gateway.devnet.chain import Devnet
from gateway.devnet.ledger import Rejection, SubmitResult, TxStatus
from gateway.devnet.options import add_arguments
from gateway.devnet.wire import Submission, WireError, parse_submission

log = logging.getLogger("farebox.devnet")

DEVNET = web.AppKey("devnet", Devnet)
FAUCET_CAP = web.AppKey("faucet_cap", int)
DEFAULT_FAUCET_CAP = 10_000_000
MAX_BODY = 16 << 20
MAX_MINE = 1000
MAX_WAIT_SECONDS = 30.0
DEFAULT_WAIT_SECONDS = 5.0  # ARC's default for X-MaxTimeout

_TXID = re.compile(r"[0-9a-fA-F]{64}")
_ERRORS = {
    400: ("Bad request", "The request seems to be malformed and cannot be processed"),
    404: ("Not found", "The requested resource could not be found"),
    409: ("Generic error", "Transaction could not be processed"),
    461: ("Malformed transaction", "Transaction is malformed and cannot be processed"),
    462: ("Invalid inputs", "Transaction is invalid because the inputs are non-existent or spent"),
    463: ("Malformed transaction", "Transaction is malformed and cannot be processed"),
    465: ("Fee too low", "Fees are too low"),
    466: ("Conflicting tx found", "Transaction is valid, but there is a conflicting tx"),
    467: ("Mined ancestors not found", "Error validating BEEF: mined ancestors not found"),
    468: ("Invalid BUMPs", "Error validating BEEF: could not calculate Merkle Roots from BUMPs"),
    469: (
        "Merkle Roots validation failed",
        "Error validating BEEF: could not validate Merkle Roots",
    ),
}
_REJECTION_CODES = {
    Rejection.MALFORMED: 463,
    Rejection.MISSING_INPUTS: 462,
    Rejection.SCRIPT: 461,
    Rejection.FEE: 465,
    Rejection.MEMPOOL_FULL: 409,
}


class ArcError(Exception):
    def __init__(self, status: int, extra_info: str, txid: str = "") -> None:
        super().__init__(extra_info)
        self.status = status
        self.extra_info = extra_info
        self.txid = txid


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _error_response(error: ArcError) -> web.Response:
    title, detail = _ERRORS[error.status]
    body = {
        "type": f"https://bitcoin-sv.github.io/arc/#/errors?id=_{error.status}",
        "title": title,
        "status": error.status,
        "detail": detail,
        "txid": error.txid or None,
        "extraInfo": error.extra_info,
    }
    return web.json_response(body, status=error.status)


@web.middleware
async def _arc_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except ArcError as error:
        return _error_response(error)


def status_json(devnet: Devnet, result: SubmitResult) -> dict[str, object]:
    """ARC's TransactionResponse / TransactionStatus body."""
    path = devnet.merkle_path(result.txid) if result.status == TxStatus.MINED else None
    body: dict[str, object] = {
        "txid": result.txid,
        "txStatus": str(result.status),
        "blockHeight": result.block_height,
        "blockHash": result.block_hash,
        "merklePath": path.to_hex() if path is not None else "",
        "extraInfo": result.reason,
        "status": 200,
        "title": "OK",
        "timestamp": _now(),
    }
    if result.competing_txs:
        body["competingTxs"] = list(result.competing_txs)
    return body


def _failure(result: SubmitResult) -> ArcError:
    """A REJECTED result as the ARC error for its cause."""
    code = _REJECTION_CODES[result.rejection or Rejection.MALFORMED]
    return ArcError(code, result.reason, result.txid)


# ----- POST /v1/tx ------------------------------------------------------------


async def _read_body(request: web.Request) -> bytes:
    """The transaction bytes, whichever way ARC clients send them."""
    body = await request.read()
    if request.content_type == "application/json":
        try:
            raw_hex = json.loads(body)["rawTx"]
            return bytes.fromhex(raw_hex)
        except (ValueError, KeyError, TypeError):
            raise ArcError(400, 'expected JSON {"rawTx": "<hex>"}') from None
    if request.content_type in ("application/octet-stream", "application/beef"):
        return body
    try:  # text/plain, or anything else that is hex
        return bytes.fromhex(body.decode("ascii").strip())
    except (UnicodeDecodeError, ValueError):
        raise ArcError(400, "expected hex text, JSON or application/octet-stream") from None


def _check_proven(devnet: Devnet, entry: Entry, path: MerklePath) -> None:
    try:
        root = path.compute_root(entry.txid)
    except Exception:
        raise ArcError(468, f"BUMP does not prove {entry.txid}", entry.txid) from None
    if not devnet.root_matches(root, path.block_height):
        raise ArcError(
            469, f"merkle root for {entry.txid} is not block {path.block_height}'s", entry.txid
        )


def _check_ef_claims(devnet: Devnet, entry: Entry) -> None:
    """EF states what each input spends; it must agree with the chain."""
    assert entry.tx is not None
    for vin, tx_input in enumerate(entry.tx.inputs):
        actual = devnet.get_output(tx_input.source_txid, tx_input.source_output_index)
        if actual is None:
            continue  # submit() reports unknown inputs
        if (
            actual.satoshis != tx_input.satoshis
            or actual.locking_script.serialize() != tx_input.locking_script.serialize()
        ):
            raise ArcError(463, f"EF input {vin} misstates the output it spends", entry.txid)


def _submit_ancestor(devnet: Devnet, entry: Entry) -> None:
    assert entry.tx is not None
    result = devnet.submit(entry.tx)
    if result.status == TxStatus.DOUBLE_SPEND_ATTEMPTED:
        competing = ", ".join(result.competing_txs)
        raise ArcError(466, f"ancestor {entry.txid} conflicts with {competing}", entry.txid)
    if not result.accepted:
        error = _failure(result)
        error.extra_info = f"ancestor {entry.txid}: {error.extra_info}"
        raise error


def process_submission(devnet: Devnet, submission: Submission) -> SubmitResult:
    """Broadcast a submission: unmined BEEF ancestors first, then the subject."""
    for entry in submission.entries:
        if entry.path is not None:
            _check_proven(devnet, entry, entry.path)
        if entry.path is not None or entry.tx is None:
            known = devnet.status(entry.txid)
            if known is None or not known.accepted:
                raise ArcError(467, f"{entry.txid} is not known to this chain", entry.txid)
        elif entry.txid != submission.subject:
            _submit_ancestor(devnet, entry)
    subject = submission.subject_entry
    if subject.path is not None:
        result = devnet.status(subject.txid)
        assert result is not None
        return result
    if submission.format == "ef":
        _check_ef_claims(devnet, subject)
    assert subject.tx is not None
    result = devnet.submit(subject.tx)
    if result.status == TxStatus.REJECTED:
        raise _failure(result)
    return result


def _wait_timeout(request: web.Request) -> float:
    try:
        wanted = float(request.headers.get("X-MaxTimeout", DEFAULT_WAIT_SECONDS))
    except ValueError:
        wanted = DEFAULT_WAIT_SECONDS
    return min(max(wanted, 0.0), MAX_WAIT_SECONDS)


def _wants_mined(request: web.Request) -> bool:
    # X-WaitFor names a status; GorillaPool's X-WaitForStatus numbers them (9 = MINED).
    # Every other status is reached before the response anyway.
    return (
        request.headers.get("X-WaitFor", "").upper() == "MINED"
        or request.headers.get("X-WaitForStatus", "").strip() == "9"
    )


async def _wait_mined(devnet: Devnet, result: SubmitResult, timeout: float) -> SubmitResult:
    """Poll until an (auto-mining) devnet mines the transaction, or time runs out."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while result.status == TxStatus.SEEN_ON_NETWORK and loop.time() < deadline:
        await asyncio.sleep(0.05)
        result = devnet.status(result.txid) or result
    return result


async def post_tx(request: web.Request) -> web.Response:
    devnet = request.app[DEVNET]
    try:
        submission = parse_submission(await _read_body(request))
    except WireError as exc:
        raise ArcError(463, str(exc)) from None
    result = process_submission(devnet, submission)
    if _wants_mined(request):
        result = await _wait_mined(devnet, result, _wait_timeout(request))
    return web.json_response(status_json(devnet, result))


async def get_tx(request: web.Request) -> web.Response:
    devnet = request.app[DEVNET]
    txid = _txid_param(request)
    result = devnet.status(txid)
    if result is None:
        raise ArcError(404, f"transaction {txid} is unknown", txid)
    return web.json_response(status_json(devnet, result))


async def get_policy(request: web.Request) -> web.Response:
    devnet = request.app[DEVNET]
    policy = {
        "maxscriptsizepolicy": devnet.max_tx_bytes,
        "maxtxsigopscountspolicy": 4294967295,
        "maxtxsizepolicy": devnet.max_tx_bytes,
        "miningFee": {"satoshis": devnet.min_fee_sat_per_kb, "bytes": 1000},
    }
    return web.json_response({"policy": policy, "timestamp": _now()})


def _txid_param(request: web.Request) -> str:
    txid = request.match_info["txid"]
    if not _TXID.fullmatch(txid):
        raise ArcError(400, "a txid is 64 hex characters")
    return txid.lower()


# ----- headers ----------------------------------------------------------------


def _int_param(value: str | None, name: str) -> int:
    try:
        return int(value or "")
    except ValueError:
        raise ArcError(400, f"{name} must be an integer") from None


async def get_tip(request: web.Request) -> web.Response:
    block = request.app[DEVNET].block(request.app[DEVNET].height)
    return web.json_response({"height": block.height, "hash": block.hash})


async def get_header(request: web.Request) -> web.Response:
    height = _int_param(request.match_info["height"], "height")
    try:
        block = request.app[DEVNET].block(height)
    except IndexError:
        raise ArcError(404, f"no block at height {height}") from None
    return web.json_response(
        {
            "height": block.height,
            "hash": block.hash,
            "prevHash": block.prev_hash,
            "merkleRoot": block.merkle_root,
            "time": block.time,
            "header": block.header.hex(),
        }
    )


async def verify_root(request: web.Request) -> web.Response:
    root = request.query.get("root", "")
    height = _int_param(request.query.get("height"), "height")
    return web.json_response({"valid": request.app[DEVNET].root_matches(root, height)})


async def bhs_verify_roots(request: web.Request) -> web.Response:
    """Block Headers Service: POST [{"merkleRoot", "blockHeight"}]."""
    devnet = request.app[DEVNET]
    try:
        items = await request.json()
        checks = [(str(i["merkleRoot"]), int(i["blockHeight"])) for i in items]
    except (ValueError, KeyError, TypeError):
        raise ArcError(400, 'expected [{"merkleRoot": "...", "blockHeight": n}]') from None
    confirmations = []
    for root, height in checks:
        if height > devnet.height:
            state = "UNABLE_TO_VERIFY"
        else:
            state = "CONFIRMED" if devnet.root_matches(root, height) else "INVALID"
        confirmations.append({"merkleRoot": root, "blockHeight": height, "confirmation": state})
    states = {c["confirmation"] for c in confirmations}
    overall = next(
        (s for s in ("INVALID", "UNABLE_TO_VERIFY") if s in states),
        "CONFIRMED" if states else "INVALID",
    )
    return web.json_response({"confirmationState": overall, "confirmations": confirmations})


async def bhs_tip(request: web.Request) -> web.Response:
    devnet = request.app[DEVNET]
    block = devnet.block(devnet.height)
    header = {
        "hash": block.hash,
        "version": int.from_bytes(block.header[:4], "little"),
        "prevBlockHash": block.prev_hash,
        "merkleRoot": block.merkle_root,
        "creationTimestamp": block.time,
        "difficultyTarget": int.from_bytes(block.header[72:76], "little"),
        "nonce": int.from_bytes(block.header[76:80], "little"),
    }
    return web.json_response(
        {"header": header, "state": "LONGEST_CHAIN", "chainWork": "0", "height": block.height}
    )


# ----- faucet, mining, BEEF -----------------------------------------------------


async def _json_object(request: web.Request) -> dict[str, object]:
    if not await request.read():
        return {}
    try:
        body = await request.json()
    except ValueError:
        raise ArcError(400, "body must be JSON") from None
    if not isinstance(body, dict):
        raise ArcError(400, "body must be a JSON object")
    return body


async def post_faucet(request: web.Request) -> web.Response:
    devnet = request.app[DEVNET]
    cap = request.app[FAUCET_CAP]
    body = await _json_object(request)
    recipient = body.get("address", body.get("pubkey"))
    satoshis = body.get("satoshis")
    if not isinstance(recipient, str):
        raise ArcError(400, 'give "address" or "pubkey"')
    if not isinstance(satoshis, int) or isinstance(satoshis, bool) or not 0 < satoshis <= cap:
        raise ArcError(400, f'"satoshis" must be an integer from 1 to {cap}')
    try:
        tx = devnet.faucet(recipient, satoshis)
    except ValueError as exc:
        raise ArcError(400, f"bad recipient: {exc}") from None
    except RuntimeError as exc:
        raise ArcError(409, str(exc)) from None
    assert tx.merkle_path is not None
    return web.json_response(
        {
            "txid": tx.txid(),
            "beef": tx.to_beef().hex(),
            "vout": 0,
            "satoshis": satoshis,
            "blockHeight": tx.merkle_path.block_height,
        }
    )


async def post_mine(request: web.Request) -> web.Response:
    devnet = request.app[DEVNET]
    body = await _json_object(request)
    blocks = body.get("blocks", 1)
    if not isinstance(blocks, int) or isinstance(blocks, bool) or not 0 < blocks <= MAX_MINE:
        raise ArcError(400, f'"blocks" must be an integer from 1 to {MAX_MINE}')
    mined = devnet.mine(blocks)
    return web.json_response(
        {"height": devnet.height, "blocks": [{"height": b.height, "hash": b.hash} for b in mined]}
    )


async def get_beef(request: web.Request) -> web.Response:
    devnet = request.app[DEVNET]
    txid = _txid_param(request)
    try:
        beef = devnet.beef_for(txid)
    except KeyError:
        raise ArcError(404, f"transaction {txid} is unknown", txid) from None
    return web.json_response({"txid": txid, "beef": beef.hex()})


# ----- WhatsOnChain-style lookups (what gateway.chain.woc asks) ------------------


async def woc_unspent(request: web.Request) -> web.Response:
    """GET /v1/bsv/{net}/script/{scripthash}/unspent, answered as WhatsOnChain does:
    the script hash is the SHA-256 of the locking script, byte-reversed hex."""
    devnet = request.app[DEVNET]
    wanted = request.match_info["scripthash"].lower()
    found = []
    for script, outputs in devnet.scripts_with_unspent().items():
        if script_hash(script) == wanted:
            found = outputs
            break
    return web.json_response(
        [
            {"height": height or 0, "tx_pos": vout, "tx_hash": txid, "value": sats}
            for txid, vout, sats, height in found
        ]
    )


async def woc_beef(request: web.Request) -> web.Response:
    """GET /v1/bsv/{net}/tx/{txid}/beef: the transaction's BEEF as hex text."""
    devnet = request.app[DEVNET]
    txid = _txid_param(request)
    try:
        beef = devnet.beef_for(txid)
    except KeyError:
        return web.Response(status=404, text="not found")
    return web.Response(text=beef.hex())


# ----- app --------------------------------------------------------------------


async def _mine_every(devnet: Devnet, interval: float) -> None:
    """Mine a block every `interval` seconds while something is pending.

    Idle periods make no blocks, so a long-running devnet stays small.
    """
    while True:
        await asyncio.sleep(interval)
        if devnet.mempool_size:
            (block,) = devnet.mine()
            log.info("mined block %d with %d transactions", block.height, len(block.txids) - 1)


def _auto_miner(interval: float) -> Callable[[web.Application], AsyncIterator[None]]:
    async def run(app: web.Application) -> AsyncIterator[None]:
        task = asyncio.create_task(_mine_every(app[DEVNET], interval))
        yield
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    return run


def make_app(
    devnet: Devnet,
    *,
    block_interval: float | None = None,
    faucet_cap: int = DEFAULT_FAUCET_CAP,
) -> web.Application:
    """The devnet's HTTP API; with `block_interval`, pending txs are mined that often."""
    app = web.Application(middlewares=[_arc_errors], client_max_size=MAX_BODY)
    app[DEVNET] = devnet
    app[FAUCET_CAP] = faucet_cap
    if block_interval:
        app.cleanup_ctx.append(_auto_miner(block_interval))
    app.router.add_post("/v1/tx", post_tx)
    app.router.add_get("/v1/tx/{txid}", get_tx)
    app.router.add_get("/v1/policy", get_policy)
    app.router.add_get("/headers/tip", get_tip)
    app.router.add_get("/headers/{height}", get_header)
    app.router.add_get("/merkle-root/verify", verify_root)
    app.router.add_post("/api/v1/chain/merkleroot/verify", bhs_verify_roots)
    app.router.add_get("/api/v1/chain/tip/longest", bhs_tip)
    app.router.add_get("/beef/{txid}", get_beef)
    app.router.add_get("/v1/bsv/{net}/script/{scripthash}/unspent", woc_unspent)
    app.router.add_get("/v1/bsv/{net}/tx/{txid}/beef", woc_beef)
    app.router.add_post("/faucet", post_faucet)
    app.router.add_post("/mine", post_mine)
    return app


async def start(
    host: str = "127.0.0.1",
    port: int = 8404,
    *,
    devnet: Devnet | None = None,
    block_interval: float | None = None,
) -> tuple[web.AppRunner, Devnet]:
    """Serve a devnet (a new one unless given); `await runner.cleanup()` stops it.

    With port 0 the OS picks a port: read it from `runner.addresses`.
    """
    devnet = devnet if devnet is not None else Devnet()
    runner = web.AppRunner(make_app(devnet, block_interval=block_interval), access_log=None)
    await runner.setup()
    await web.TCPSite(runner, host, port).start()
    return runner, devnet


async def _serve(host: str, port: int, block_interval: float | None) -> None:
    runner, devnet = await start(host, port, block_interval=block_interval)
    bound_host, bound_port = runner.addresses[0][:2]
    url = f"http://{bound_host}:{bound_port}"
    log.info("devnet at %s (height %d)", url, devnet.height)
    log.info("ARC: POST %s/v1/tx   headers: GET %s/headers/tip", url, url)
    log.info(
        "faucet: curl -s %s/faucet -H 'Content-Type: application/json' "
        '-d \'{"address": "<P2PKH address>", "satoshis": 100000}\'',
        url,
    )
    if block_interval:
        log.info("mining pending transactions every %g s", block_interval)
    else:
        log.info("mining on demand only: curl -s -X POST %s/mine", url)
    try:
        await asyncio.Event().wait()
    finally:
        await runner.cleanup()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m gateway.devnet",
        description="A local BSV development chain with an ARC-compatible API and a faucet.",
    )
    add_arguments(parser)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_serve(args.host, args.port, args.block_interval or None))
