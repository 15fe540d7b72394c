"""The payout ledger in the shared Redis store: rewards across workers and instances.

The same Ledger as ledgerfile.FileLedger (gateway.payouts.engine), over the
gateway's RedisStore: every step one Lua script, so a reward's budget check
and reservation is atomic however many gateways take part at once. Every key
carries the hash tag `{payouts}`: one Redis Cluster slot holds the ledger
(payouts are few next to requests, so that slot is no hot spot).

Keys (P is the store's prefix, "farebox:" by default):

    P payouts:{payouts}:id             str   the ledger's id, set once
    P payouts:{payouts}:seq            str   a counter: the order payouts are recorded
    P payouts:{payouts}:p:ID           hash  one payout's fields (records.Payout)
    P payouts:{payouts}:all            zset  id -> seq
    P payouts:{payouts}:st:STATUS      zset  id -> seq, per status
    P payouts:{payouts}:b:TXID         hash  one batch's fields (records.Batch; beef hex)
    P payouts:{payouts}:bst:STATUS     zset  txid -> seq, per batch status
    P payouts:{payouts}:budget         hash  "CAMPAIGN|" and "CAMPAIGN|DAY" -> satoshis held
    P payouts:{payouts}:lease:NAME     str   the holder; PX its term

Numbers travel as strings; Lua's doubles are exact to 2^53, above any
satoshi amount there will ever be.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Sequence
from typing import Any

from gateway.payouts.records import MAX_ATTEMPTS, STATUSES, Batch, Payout, Tally
from gateway.policy.schema import Budget
from gateway.store.redis import RedisStore

_FIELDS = (
    "id", "campaign", "recipient", "script", "satoshis", "memo", "sender", "prefix", "suffix",
    "status", "txid", "vout", "reason", "attempts", "retry_of", "created", "updated", "ticket",
    "day",
)  # fmt: skip
_INTS = {"satoshis", "vout", "attempts"}
_FLOATS = {"created", "updated"}
_OPTIONAL = {"sender", "prefix", "suffix", "txid", "vout", "retry_of", "ticket"}

# KEYS[1] = the base "P payouts:{payouts}:". Other keys are built from it in
# the script: they share its tag, so its slot.
_LIB = """
local base = KEYS[1]
local function now() local t = redis.call('TIME'); return t[1] + t[2] / 1e6 end
local function set_status(id, old, new, seq)
  if old then redis.call('ZREM', base .. 'st:' .. old, id) end
  redis.call('ZADD', base .. 'st:' .. new, seq, id)
end
local function seq_of(id) return redis.call('ZSCORE', base .. 'all', id) end
"""

# ARGV: fields as name, value pairs (status given). -> 1 added, 0 there already
_ADD = (
    _LIB
    + """
local id = ARGV[2]
if redis.call('EXISTS', base .. 'p:' .. id) == 1 then return 0 end
local seq = redis.call('INCR', base .. 'seq')
local fields = {}
for i = 1, #ARGV, 2 do fields[#fields + 1] = ARGV[i]; fields[#fields + 1] = ARGV[i + 1] end
local t = tostring(now())
fields[#fields + 1] = 'created'; fields[#fields + 1] = t
fields[#fields + 1] = 'updated'; fields[#fields + 1] = t
redis.call('HSET', base .. 'p:' .. id, unpack(fields))
redis.call('ZADD', base .. 'all', seq, id)
set_status(id, nil, redis.call('HGET', base .. 'p:' .. id, 'status'), seq)
return 1
"""
)

# ARGV: total, per_day ('' none), day, campaign, satoshis, then fields -> 'new'|'again'|'exhausted'
_RESERVE = (
    _LIB
    + """
local total, per_day, day, campaign, sats = tonumber(ARGV[1]), ARGV[2], ARGV[3], ARGV[4], tonumber(ARGV[5])
local id = ARGV[7]
if redis.call('EXISTS', base .. 'p:' .. id) == 1 then return 'again' end
local spent = tonumber(redis.call('HGET', base .. 'budget', campaign .. '|') or '0')
local today = tonumber(redis.call('HGET', base .. 'budget', campaign .. '|' .. day) or '0')
if spent + sats > total then return 'exhausted' end
if per_day ~= '' and today + sats > tonumber(per_day) then return 'exhausted' end
redis.call('HINCRBY', base .. 'budget', campaign .. '|', sats)
redis.call('HINCRBY', base .. 'budget', campaign .. '|' .. day, sats)
local seq = redis.call('INCR', base .. 'seq')
local fields = {}
for i = 6, #ARGV, 2 do fields[#fields + 1] = ARGV[i]; fields[#fields + 1] = ARGV[i + 1] end
local t = tostring(now())
fields[#fields + 1] = 'created'; fields[#fields + 1] = t
fields[#fields + 1] = 'updated'; fields[#fields + 1] = t
fields[#fields + 1] = 'status'; fields[#fields + 1] = 'reserved'
fields[#fields + 1] = 'day'; fields[#fields + 1] = day
redis.call('HSET', base .. 'p:' .. id, unpack(fields))
redis.call('ZADD', base .. 'all', seq, id)
set_status(id, nil, 'reserved', seq)
return 'new'
"""
)

# ARGV: id -> 1 moved
_OWE = (
    _LIB
    + """
local id = ARGV[1]
local key = base .. 'p:' .. id
if redis.call('HGET', key, 'status') ~= 'reserved' then return 0 end
redis.call('HSET', key, 'status', 'owed', 'updated', tostring(now()))
set_status(id, 'reserved', 'owed', seq_of(id))
return 1
"""
)

# ARGV: id -> 1 dropped (its satoshis back to the total and to the day it was charged to)
_UNRESERVE = (
    _LIB
    + """
local id = ARGV[1]
local key = base .. 'p:' .. id
if redis.call('HGET', key, 'status') ~= 'reserved' then return 0 end
local day = redis.call('HGET', key, 'day') or ''
local campaign = redis.call('HGET', key, 'campaign')
local sats = tonumber(redis.call('HGET', key, 'satoshis'))
for _, field in ipairs({campaign .. '|', campaign .. '|' .. day}) do
  local left = tonumber(redis.call('HGET', base .. 'budget', field) or '0') - sats
  if left < 0 then left = 0 end
  redis.call('HSET', base .. 'budget', field, left)
end
redis.call('DEL', key)
redis.call('ZREM', base .. 'all', id)
redis.call('ZREM', base .. 'st:reserved', id)
return 1
"""
)

# ARGV: txid, beef hex, inputs, fee, satoshis, then the payout ids in vout order
# -> 1, or the id of a payout not owed (nothing changed)
_OPEN_BATCH = (
    _LIB
    + """
local txid = ARGV[1]
for i = 6, #ARGV do
  if redis.call('HGET', base .. 'p:' .. ARGV[i], 'status') ~= 'owed' then return ARGV[i] end
end
local t = tostring(now())
for i = 6, #ARGV do
  local id = ARGV[i]
  redis.call('HSET', base .. 'p:' .. id, 'status', 'signed', 'txid', txid,
             'vout', tostring(i - 6), 'updated', t)
  set_status(id, 'owed', 'signed', seq_of(id))
end
local seq = redis.call('INCR', base .. 'seq')
redis.call('HSET', base .. 'b:' .. txid, 'txid', txid, 'beef', ARGV[2], 'inputs', ARGV[3],
           'fee', ARGV[4], 'satoshis', ARGV[5], 'payouts', cjson.encode({unpack(ARGV, 6)}),
           'status', 'signed', 'reason', '', 'created', t, 'updated', t, 'seq', seq)
redis.call('ZADD', base .. 'bst:signed', seq, txid)
return 1
"""
)

_ORDER = "local order = {" + ", ".join(f"{s}={i}" for i, s in enumerate(STATUSES)) + "}\n"

# ARGV: txid, status, block height ('' none)
_ADVANCE = (
    _LIB
    + _ORDER
    + """
local txid, status, height = ARGV[1], ARGV[2], ARGV[3]
local bkey = base .. 'b:' .. txid
local old = redis.call('HGET', bkey, 'status')
if not old or old == 'failed' or order[old] >= order[status] then return 0 end
local t = tostring(now())
redis.call('HSET', bkey, 'status', status, 'updated', t)
if height ~= '' then redis.call('HSET', bkey, 'block_height', height) end
local seq = redis.call('HGET', bkey, 'seq')
redis.call('ZREM', base .. 'bst:' .. old, txid)
redis.call('ZADD', base .. 'bst:' .. status, seq, txid)
for _, id in ipairs(cjson.decode(redis.call('HGET', bkey, 'payouts'))) do
  local key = base .. 'p:' .. id
  local was = redis.call('HGET', key, 'status')
  if redis.call('HGET', key, 'txid') == txid and (was == 'signed' or was == 'sent' or was == 'seen') then
    redis.call('HSET', key, 'status', status, 'reason', '', 'updated', t)
    set_status(id, was, status, seq_of(id))
  end
end
return 1
"""
)

# ARGV: txid, reason, max attempts (0: no retry) -> how many are owed again
_REFUSE = (
    _LIB
    + """
local txid, reason, most = ARGV[1], ARGV[2], tonumber(ARGV[3])
local bkey = base .. 'b:' .. txid
local old = redis.call('HGET', bkey, 'status')
if not old or old == 'failed' or old == 'mined' then return 0 end
local t = tostring(now())
redis.call('HSET', bkey, 'status', 'failed', 'reason', reason, 'updated', t)
redis.call('ZREM', base .. 'bst:' .. old, txid)
redis.call('ZADD', base .. 'bst:failed', redis.call('HGET', bkey, 'seq'), txid)
local owed = 0
for _, id in ipairs(cjson.decode(redis.call('HGET', bkey, 'payouts'))) do
  local key = base .. 'p:' .. id
  local was = redis.call('HGET', key, 'status')
  if redis.call('HGET', key, 'txid') == txid and (was == 'signed' or was == 'sent' or was == 'seen') then
    local attempts = tonumber(redis.call('HGET', key, 'attempts') or '0') + 1
    local now_status = 'owed'
    if attempts >= most then now_status = 'failed' else owed = owed + 1 end
    redis.call('HSET', key, 'status', now_status, 'attempts', attempts, 'reason', reason,
               'retry_of', txid, 'updated', t)
    redis.call('HDEL', key, 'txid', 'vout')
    set_status(id, was, now_status, seq_of(id))
  end
end
return owed
"""
)

# ARGV: reason, then payout ids: owed ones become failed
_FAIL = (
    _LIB
    + """
local t = tostring(now())
for i = 2, #ARGV do
  local id = ARGV[i]
  local key = base .. 'p:' .. id
  if redis.call('HGET', key, 'status') == 'owed' then
    redis.call('HSET', key, 'status', 'failed', 'reason', ARGV[1], 'updated', t)
    set_status(id, 'owed', 'failed', seq_of(id))
  end
end
return 1
"""
)

# ARGV: txid, status -> how many payouts took it again
_REVIVE = (
    _LIB
    + """
local txid, status = ARGV[1], ARGV[2]
local bkey = base .. 'b:' .. txid
if redis.call('HGET', bkey, 'status') ~= 'failed' then return 0 end
local t = tostring(now())
redis.call('HSET', bkey, 'status', status, 'reason', '', 'updated', t)
redis.call('ZREM', base .. 'bst:failed', txid)
redis.call('ZADD', base .. 'bst:' .. status, redis.call('HGET', bkey, 'seq'), txid)
local n = 0
for vout, id in ipairs(cjson.decode(redis.call('HGET', bkey, 'payouts'))) do
  local key = base .. 'p:' .. id
  local was = redis.call('HGET', key, 'status')
  if was == 'failed' or was == 'owed' then
    redis.call('HSET', key, 'status', status, 'txid', txid, 'vout', vout - 1, 'reason', '',
               'updated', t)
    set_status(id, was, status, seq_of(id))
    n = n + 1
  end
end
return n
"""
)

# ARGV: reason, then payout ids: failed ones cancelled for good -> how many
_CANCEL = (
    _LIB
    + """
local t = tostring(now())
local n = 0
for i = 2, #ARGV do
  local id = ARGV[i]
  local key = base .. 'p:' .. id
  if redis.call('HGET', key, 'status') == 'failed' then
    redis.call('HSET', key, 'status', 'cancelled', 'reason', ARGV[1], 'updated', t)
    set_status(id, 'failed', 'cancelled', seq_of(id))
    n = n + 1
  end
end
return n
"""
)

_RETRY_FAILED = (
    _LIB
    + """
local ids = redis.call('ZRANGE', base .. 'st:failed', 0, -1)
local t = tostring(now())
for _, id in ipairs(ids) do
  redis.call('HSET', base .. 'p:' .. id, 'status', 'owed', 'attempts', 0, 'updated', t)
  set_status(id, 'failed', 'owed', seq_of(id))
end
return #ids
"""
)

# ARGV: index zset name, start, stop -> a list of HGETALL results
_LIST = (
    _LIB
    + """
local ids = redis.call('ZRANGE', base .. ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3]))
local out = {}
for _, id in ipairs(ids) do out[#out + 1] = redis.call('HGETALL', base .. ARGV[4] .. id) end
return out
"""
)

_TALLY = (
    _LIB
    + """
local out = {}
for _, status in ipairs(ARGV) do
  local ids = redis.call('ZRANGE', base .. 'st:' .. status, 0, -1)
  local sum = 0
  for _, id in ipairs(ids) do
    sum = sum + tonumber(redis.call('HGET', base .. 'p:' .. id, 'satoshis'))
  end
  out[#out + 1] = {status, #ids, tostring(sum)}
end
return out
"""
)

# ARGV: name, holder, ms -> 1 held
_LEASE = """
local holder = redis.call('GET', KEYS[1])
if holder and holder ~= ARGV[1] then return 0 end
redis.call('SET', KEYS[1], ARGV[1], 'PX', tonumber(ARGV[2]))
return 1
"""


class RedisLedger:
    """The Ledger (gateway.payouts.engine) and the reward book in Redis; see the module."""

    def __init__(self, store: RedisStore, ledger_id: str, id_key: bytes = b"") -> None:
        self.store = store
        self.ledger_id = ledger_id
        self.id_key = id_key  # secret: keys rewards' payout ids (never the subject itself)
        self.base = f"{store.keys.prefix}payouts:{{payouts}}:"
        self._scripts = {
            name: store.script(source)
            for name, source in (
                ("add", _ADD), ("reserve", _RESERVE), ("owe", _OWE), ("unreserve", _UNRESERVE),
                ("open_batch", _OPEN_BATCH), ("advance", _ADVANCE), ("refuse", _REFUSE),
                ("retry_failed", _RETRY_FAILED), ("fail", _FAIL), ("revive", _REVIVE),
                ("cancel", _CANCEL), ("list", _LIST), ("tally", _TALLY),
                ("lease", _LEASE), ("hgetall", "return redis.call('HGETALL', KEYS[1])"),
                ("spent", "return redis.call('HMGET', KEYS[1], ARGV[1], ARGV[2])"),
            )
        }  # fmt: skip

    @classmethod
    async def open(cls, store: RedisStore) -> RedisLedger:
        """The ledger in `store`, its id made on first use."""
        ledger = cls(store, "")
        key = ledger.base + "id"
        source = "redis.call('SET', KEYS[1], ARGV[1], 'NX'); return redis.call('GET', KEYS[1])"
        made = store.script(source)
        found = await store.run(made, [key], ["ledger:" + os.urandom(16).hex()])
        ledger.ledger_id = found.decode() if isinstance(found, bytes) else str(found)
        secret = await store.run(made, [ledger.base + "id_key"], [os.urandom(32).hex()])
        ledger.id_key = bytes.fromhex(secret.decode() if isinstance(secret, bytes) else secret)
        return ledger

    async def _call(self, name: str, args: Sequence[Any], key: str | None = None) -> Any:
        return await self.store.run(self._scripts[name], [key or self.base], [str(a) for a in args])

    # ----- writing ----------------------------------------------------------------

    async def add(self, payouts: Sequence[Payout]) -> list[Payout]:
        for payout in payouts:
            await self._call("add", _pairs(payout, status="owed"))
        found = [await self.get(p.id) for p in payouts]
        return [p for p in found if p is not None]

    async def reserve(self, payout: Payout, budget: Budget, day: str) -> tuple[str, Payout | None]:
        args = [
            budget.total, budget.per_day or "", day, payout.campaign, payout.satoshis,
            *_pairs(payout),
        ]  # fmt: skip
        outcome = await self._call("reserve", args)
        outcome = outcome.decode() if isinstance(outcome, bytes) else str(outcome)
        if outcome == "exhausted":
            return outcome, None
        return outcome, await self.get(payout.id)

    async def owe(self, payout_id: str) -> Payout | None:
        await self._call("owe", [payout_id])
        return await self.get(payout_id)

    async def unreserve(self, payout_id: str) -> bool:
        return bool(await self._call("unreserve", [payout_id]))

    async def open_batch(self, batch: Batch) -> None:
        from gateway.payouts.ledgerfile import LedgerConflict, _outpoints

        found = await self._call(
            "open_batch",
            [batch.txid, batch.beef.hex(), _outpoints(batch.inputs), batch.fee, batch.satoshis,
             *batch.payouts],
        )  # fmt: skip
        if found != 1:
            bad = found.decode() if isinstance(found, bytes) else found
            raise LedgerConflict(f"payout {bad!r} is not owed")

    async def advance(self, txid: str, status: str, *, block_height: int | None = None) -> None:
        height = "" if block_height is None else block_height
        await self._call("advance", [txid, status, height])

    async def refuse(self, txid: str, reason: str, *, retry: bool = True) -> int:
        return int(await self._call("refuse", [txid, reason, MAX_ATTEMPTS if retry else 0]))

    async def fail(self, payout_ids: Sequence[str], reason: str) -> None:
        if payout_ids:
            await self._call("fail", [reason, *payout_ids])

    async def revive(self, txid: str, status: str) -> int:
        return int(await self._call("revive", [txid, status]))

    async def cancel(self, payout_ids: Sequence[str], reason: str) -> int:
        if not payout_ids:
            return 0
        return int(await self._call("cancel", [reason, *payout_ids]))

    async def retry_failed(self) -> int:
        return int(await self._call("retry_failed", []))

    async def lease(self, name: str, holder: str, seconds: float) -> bool:
        key = f"{self.base}lease:{name}"
        return bool(await self._call("lease", [holder, max(1, int(seconds * 1000))], key))

    # ----- reading ----------------------------------------------------------------

    async def get(self, payout_id: str) -> Payout | None:
        fields = await self._hgetall(f"p:{payout_id}")
        return _payout(fields) if fields else None

    async def owed(self, limit: int) -> list[Payout]:
        return await self._payouts("st:owed", 0, limit - 1)

    async def payouts(
        self, *, status: str | None = None, campaign: str | None = None
    ) -> list[Payout]:
        found = await self._payouts("all" if status is None else f"st:{status}", 0, -1)
        return [p for p in found if campaign is None or p.campaign == campaign]

    async def batch(self, txid: str) -> Batch | None:
        fields = await self._hgetall(f"b:{txid}")
        return _batch(fields) if fields else None

    async def batches(self, statuses: Iterable[str]) -> list[Batch]:
        found: list[Batch] = []
        for status in statuses:
            rows = await self._call("list", [f"bst:{status}", 0, -1, "b:"])
            found.extend(_batch(_decode(row)) for row in rows)
        return sorted(found, key=lambda b: b.created)

    async def tally(self) -> Tally:
        rows = await self._call("tally", list(STATUSES))
        counts, satoshis = {}, {}
        for status, count, total in rows:
            name = status.decode() if isinstance(status, bytes) else str(status)
            if int(count):
                counts[name] = int(count)
                satoshis[name] = int(float(total))
        return Tally(counts, satoshis)

    async def spent(self, campaign: str, day: str) -> tuple[int, int]:
        values = await self._call(
            "spent", [f"{campaign}|", f"{campaign}|{day}"], self.base + "budget"
        )
        return tuple(int(v or 0) for v in values)  # type: ignore[return-value]

    async def close(self) -> None:
        """The store is the gateway's: closed with it, not here."""

    async def _payouts(self, index: str, start: int, stop: int) -> list[Payout]:
        rows = await self._call("list", [index, start, stop, "p:"])
        return [_payout(_decode(row)) for row in rows]

    async def _hgetall(self, suffix: str) -> dict[str, str]:
        return _decode(await self._call("hgetall", [], self.base + suffix))


def _pairs(payout: Payout, status: str | None = None) -> list[Any]:
    out: list[Any] = []
    for name in _FIELDS:
        if name in ("created", "updated") or (name == "status" and status is None):
            continue
        value = status if name == "status" else getattr(payout, name)
        if value is None:
            continue
        out += [name, value]
    return out


def _decode(row: list[Any]) -> dict[str, str]:
    items = [x.decode() if isinstance(x, bytes) else str(x) for x in row]
    return dict(zip(items[::2], items[1::2], strict=True))


def _payout(fields: dict[str, str]) -> Payout:
    values: dict[str, Any] = {}
    for name in _FIELDS:
        raw = fields.get(name)
        if raw is None:
            values[name] = None if name in _OPTIONAL else ("" if name not in _INTS | _FLOATS else 0)
        elif name in _INTS:
            values[name] = int(float(raw))
        elif name in _FLOATS:
            values[name] = float(raw)
        else:
            values[name] = raw
    return Payout(**values)


def _batch(fields: dict[str, str]) -> Batch:
    from gateway.payouts.ledgerfile import _parse_outpoints

    return Batch(
        txid=fields["txid"],
        payouts=tuple(json.loads(fields["payouts"])) if fields.get("payouts") else (),
        beef=bytes.fromhex(fields["beef"]),
        inputs=_parse_outpoints(fields.get("inputs", "")),
        fee=int(fields["fee"]),
        satoshis=int(fields["satoshis"]),
        status=fields["status"],
        reason=fields.get("reason", ""),
        created=float(fields.get("created", 0)),
        updated=float(fields.get("updated", 0)),
        block_height=int(fields["block_height"]) if fields.get("block_height") else None,
    )
