"""The shared store: Redis (single server, Sentinel or Cluster) through redis.asyncio.

Every operation that reads and then writes is one Lua script, so it is atomic
on the server; every key one script touches carries the same hash tag, so a
Redis Cluster keeps them in one slot.

Key schema (P is the configurable prefix, "farebox:" by default; it may not
contain braces so that the first "{...}" of every key is the tag below):

    P claim:{TXID}          hash  purchase, owner, receipt (JSON), token
                                  a claim in progress expires after `claim_ttl`
                                  (1 h) in case its owner died; `complete`
                                  removes the expiry: receipts are kept for good
    P tab:{TAB}             hash  balance (spendable; held amounts excluded)
    P tab:{TAB}:held        hash  reservation -> amount held; a worker's lease
                                  (store/leases.py) is one, its id "lease:..."
    P tab:{TAB}:due         zset  reservation -> deadline (Redis TIME, ms)
    P tab:{TAB}:once        set   `once` values credited to this tab
    P tab:{TAB}:recall      hash  "at" -> when a worker found the tab short;
                                  lease id -> when it answered; PEXPIRE 2 s
    P tab:{TAB}:seqs        hash  lease id -> its last call's seq, id:c -> the
                                  charges taken; dropped with the lease
    P hit:{KEY}:WINDOW      str   requests in the current window; PEXPIRE set
                                  by the window's first hit
    P revoked:{GRANT_ID}    str   the `until` of the revocation; EXPIREAT until
    P receipts:{receipts}:by-time            zset  txid -> receipt time, every
                                                   receipt completed
    P receipts:{receipts}:by-service:SERVICE zset  the same, one per service
    P receipts:{receipts}:body               hash  txid -> receipt (JSON), the
                                                   last one completed
    P receipts:{receipts}:by-grant           hash  grant id -> txid (`sold`)
    P stats:{DAY}           hash  JSON [service, route, counter] -> count, for
                                  one UTC day "YYYY-MM-DD"; kept for good
    P checkouts:{checkouts}:due    zset  checkout id -> when its next look is due
                                         (unix s; a lease pushes it on)
    P checkouts:{checkouts}:until  zset  checkout id -> when it is forgotten
                                         (its expiry + the grace period)
    P checkouts:{checkouts}:body   hash  checkout id -> what to look for (JSON)
                                         all three expire with the latest `until`
    P refunds:{refunds}:by-time    zset  outpoint ("txid:vout") -> when it was listed
    P refunds:{refunds}:body       hash  outpoint -> refund (JSON); kept for good
    P refunds:{refunds}:settled    hash  outpoint -> {"how", "time"} (JSON); kept for good
    P refunds:{refunds}:outpoints  zset  every outpoint listed, scored 0: a txid's
                                         entries are one ZRANGEBYLEX away
    P bound:{HOLDER}        zset  token -> its expiry (unix s), at most MAX_BOUND
                                  (those expiring last); EXPIREAT the latest

TXID, TAB, KEY, GRANT_ID and HOLDER are written as given, except that "%", "{" and
"}" become "%25", "%7B" and "%7D" and an empty id becomes "%": a brace inside
an id would otherwise end the tag early (or leave it empty, and Redis then
hashes the whole key name, scattering one tab over several slots). SERVICE
comes after the tag, so it is written as given.

The receipts index is one hash tag, so one slot (one master of a Cluster)
holds all of it: each page is one script reading a consistent snapshot in
one round trip, and each payment adds one small write there. Payments are
rare next to requests, so that slot is no hot spot; it grows by a few hundred
bytes per receipt (the body is a second copy: a receipt completed under
"checkout:<id>" has none under its txid). `complete` writes the index first,
then the claim: two scripts, as they live in two slots; see Store.complete
for what a failure in between leaves. The statistics of one day share a slot
too: one script per `count`, so a day's counting lands on one master (a
HINCRBY per counter; one master takes well over 100,000 such calls a second).

Time inside scripts comes from `redis.call('TIME')` (allowed in Redis 7:
scripts replicate their effects, not their source) so that every worker of
every machine agrees on when a hold expires; one tab lives on one server, so
one clock decides. Expired holds go back to the balance at the start of every
tab script, so no background job is needed. `hit` needs no clock (PTTL) and
`revoke` compares `until` with TIME, as `bind` and `bound` compare expiries.

The checkouts watched past their expiry share one slot, as the receipts
index does: one is added per paywall page that polls its checkout (once per
worker), and each call drops at most 100 entries past their grace, so no
call's work grows with the list; `watch_checkout` refuses new entries beyond
its `most`. The refund list is one slot too (late payments are rare).

Metered requests do not call the store each: a worker leases a slice of the
tab (`lease`, store/leases.py) and syncs what it charged every 50 ms. The
lease syncs, `reserve`/`settle` (per-request holds), `balance`, `hit` and
`revoked` are batched (gateway/store/batch.py): those asked for by one worker
within one event-loop turn go out together, one pipeline (one per node of a
cluster) without MULTI, so each script is still atomic on its own and
balances stay exact; each caller gets its own reply or StoreUnavailable. A
request cancelled once its hold is on the wire does not stop it: the hold
then returns to the tab when it expires (HOLD_TTL), as a hold whose worker
died does.

Lua numbers are doubles: amounts stay exact below 2**53 (about 9e15, i.e. 90
million BSV in satoshis or 90,000 BSV in millisatoshis per tab).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import secrets
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar
from urllib.parse import parse_qs, unquote, urlsplit

from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import Sentinel
from redis.backoff import ExponentialBackoff
from redis.commands.core import AsyncScript
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError, RedisClusterException, RedisError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from gateway.store import (
    MAX_BOUND,
    Claim,
    DayStats,
    Leased,
    LeaseSync,
    Outcome,
    StoreUnavailable,
    Window,
    check_counts,
    check_day,
    days,
    page_limit,
)
from gateway.store.batch import Coalescer
from gateway.store.receipts import Receipt
from gateway.store.refunds import Refund

T = TypeVar("T")
Client = Redis | RedisCluster
Arg = str | int
# One operation of a batch: a script (EVALSHA) or a plain command's name, its keys, its args.
Op = tuple[AsyncScript | str, list[str], list[Arg]]

CLAIM_TTL = 3600  # seconds an unfinished claim survives a claimant that died

# --- Lua ------------------------------------------------------------------------------

_CLAIM = """
-- KEYS: claim   ARGV: purchase, owner, ttl
local v = redis.call('HMGET', KEYS[1], 'purchase', 'owner', 'receipt', 'token')
if not v[1] then
  redis.call('HSET', KEYS[1], 'purchase', ARGV[1], 'owner', ARGV[2])
  redis.call('EXPIRE', KEYS[1], ARGV[3])
  return {'new'}
end
if v[1] ~= ARGV[1] then return {'conflict'} end
-- Our own call again (redis-py retried after losing the reply): still ours.
if v[2] == ARGV[2] and not v[3] then return {'new'} end
return {'same', v[3], v[4]}
"""

_COMPLETE = """
-- KEYS: claim   ARGV: purchase (from the receipt), receipt, token
-- HSETNX: a claim that expired or was released is taken over, as in memory.
redis.call('HSETNX', KEYS[1], 'purchase', ARGV[1])
redis.call('HSET', KEYS[1], 'receipt', ARGV[2], 'token', ARGV[3])
redis.call('HDEL', KEYS[1], 'owner')
redis.call('PERSIST', KEYS[1])
return 1
"""

_RELEASE = """
-- KEYS: claim   ARGV: purchase
local v = redis.call('HMGET', KEYS[1], 'purchase', 'receipt')
if v[1] == ARGV[1] and not v[2] then return redis.call('DEL', KEYS[1]) end
return 0
"""

# Shared by every tab script. KEYS: tab, held, due, once.
_TAB = """
-- string.format('%d'): tostring would write 1e+15 for large sums, which
-- HINCRBY refuses.
local function int(n) return string.format('%d', n) end
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
local function balance()
  return tonumber(redis.call('HGET', KEYS[1], 'balance') or 0)
end
-- Holds past their deadline return to the balance before anything else.
local function sweep()
  local now = int(now_ms())
  local gone = redis.call('ZRANGEBYSCORE', KEYS[3], '-inf', now)
  if #gone == 0 then return end
  local back = 0
  for _, id in ipairs(gone) do
    back = back + tonumber(redis.call('HGET', KEYS[2], id) or 0)
    redis.call('HDEL', KEYS[2], id)
  end
  redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', now)
  redis.call('HINCRBY', KEYS[1], 'balance', int(back))
end
sweep()
"""

_CREDIT = (
    _TAB
    + """
-- ARGV: amount, once
if redis.call('SADD', KEYS[4], ARGV[2]) == 0 then return {balance(), 0} end
return {redis.call('HINCRBY', KEYS[1], 'balance', ARGV[1]), 1}
"""
)

_RESERVE = (
    _TAB
    + """
-- ARGV: amount, reservation, ttl (s)
if redis.call('EXISTS', KEYS[1]) == 0 then return false end
local b = balance()
if redis.call('HEXISTS', KEYS[2], ARGV[2]) == 1 then return b end  -- a retry: held once
local amount = tonumber(ARGV[1])
if b < amount then return false end
redis.call('HSET', KEYS[2], ARGV[2], ARGV[1])
redis.call('ZADD', KEYS[3], int(now_ms() + tonumber(ARGV[3]) * 1000), ARGV[2])
return redis.call('HINCRBY', KEYS[1], 'balance', int(-amount))
"""
)

_SETTLE = (
    _TAB
    + """
-- ARGV: reservation, charge (refund: 0)
local held = redis.call('HGET', KEYS[2], ARGV[1])
if held then
  held = tonumber(held)
  redis.call('HDEL', KEYS[2], ARGV[1])
  redis.call('ZREM', KEYS[3], ARGV[1])
  redis.call('HINCRBY', KEYS[1], 'balance', int(held - math.min(tonumber(ARGV[2]), held)))
end
return balance()
"""
)

_BALANCE = (
    _TAB
    + """
if redis.call('EXISTS', KEYS[1]) == 0 then return false end
-- The payer's balance counts what workers lease (store/leases.py): theirs
-- until used, as a request's own hold is not.
local b = balance()
local held = redis.call('HGETALL', KEYS[2])
for i = 1, #held, 2 do
  if string.sub(held[i], 1, 6) == 'lease:' then b = b + tonumber(held[i + 1]) end
end
return b
"""
)

# A worker's lease on a tab (store/leases.py): one script syncs it, grows it,
# gives it back, and answers a recall. KEYS: tab, held, due, once, recall,
# seqs. ARGV: lease id, seq (rising per worker), charged (everything charged
# on this lease so far: a total, so a sync that ran after its caller gave up
# on it is not charged again by the next), in flight (held by requests not
# settled), need (free msat the worker wants; 0: a sync), ttl (s), release
# (1: give back all but what is in flight), expect (what the worker believes
# the lease holds), recall (ms a recall lasts), kept (msat kept back from a
# recall for holds the worker gives out while this call is out: a lease that
# keeps any has not answered the recall, so a short worker waits for its next
# sync, which keeps none).
# Returns false for no such tab, else
# {balance, lease, granted, pending, lost, charged taken, recalling}.
_LEASE = (
    _TAB
    + """
local id = ARGV[1]
local seq = tonumber(ARGV[2])
local charged, inflight, need = tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5])
local ttl_ms, release = tonumber(ARGV[6]) * 1000, ARGV[7] == '1'
local expect, recall_ms = tonumber(ARGV[8]), tonumber(ARGV[9])
local kept = tonumber(ARGV[10] or 0)
if need > 0 and redis.call('EXISTS', KEYS[1]) == 0 then return false end
local now = now_ms()
local at = tonumber(redis.call('HGET', KEYS[5], 'at') or 0)
local recalling = at > 0 and now - at < recall_ms
local taken = tonumber(redis.call('HGET', KEYS[6], id .. ':c') or 0)
if seq <= tonumber(redis.call('HGET', KEYS[6], id) or -1) then
  -- A resent call: answered, not applied again.
  local own = tonumber(redis.call('HGET', KEYS[2], id) or 0)
  return {balance(), own, 0, 0, 0, taken, recalling and 1 or 0}
end
local own, lost = redis.call('HGET', KEYS[2], id), 0
if own then
  own = math.max(0, tonumber(own) - math.max(0, charged - taken))
else
  own = 0  -- expired (its worker stalled past the ttl): those charges are not taken
  if expect > 0 then lost = 1 end
end
taken = math.max(taken, charged)
local function give_back()
  local free = own - inflight - kept
  if free > 0 then
    own = own - free
    redis.call('HINCRBY', KEYS[1], 'balance', int(free))
  end
end
if release or recalling then give_back() end
if recalling and kept == 0 then redis.call('HSET', KEYS[5], id, int(now)) end
local granted, pending = 0, 0
local short = need - (own - inflight - kept)
if need > 0 and short > 0 then
  local b = balance()
  if b >= short then
    -- A slice: a quarter of what is left, at most ten thousand such needs
    -- (half a second of a busy worker: a slice run dry stalls every request
    -- until Redis answers); only what is short while another worker is
    -- being asked to give back.
    local take = short
    if not recalling then
      take = math.min(b, math.max(short, math.min(math.floor(b / 4), short * 10000)))
    end
    own, granted = own + take, take
    redis.call('HINCRBY', KEYS[1], 'balance', int(-take))
  else
    if not recalling then
      redis.call('DEL', KEYS[5])
      redis.call('HSET', KEYS[5], 'at', int(now))
      redis.call('PEXPIRE', KEYS[5], recall_ms)
      at, recalling = now, true
      give_back()
    end
    redis.call('HSET', KEYS[5], id, int(now))
    -- Waiting helps while another lease has not answered this recall.
    for _, other in ipairs(redis.call('HKEYS', KEYS[2])) do
      if other ~= id and string.sub(other, 1, 6) == 'lease:' then
        if tonumber(redis.call('HGET', KEYS[5], other) or 0) < at then
          pending = 1
          break
        end
      end
    end
  end
end
if own > 0 then
  redis.call('HSET', KEYS[2], id, int(own))
  redis.call('ZADD', KEYS[3], int(now + ttl_ms), id)
  redis.call('HSET', KEYS[6], id, ARGV[2], id .. ':c', int(taken))
  redis.call('EXPIRE', KEYS[6], 86400)
else
  -- Over: the worker starts a new lease (a new id) when it needs one.
  redis.call('HDEL', KEYS[2], id)
  redis.call('ZREM', KEYS[3], id)
  redis.call('HDEL', KEYS[6], id, id .. ':c')
end
return {balance(), own, granted, pending, lost, taken, recalling and 1 or 0}
"""
)

_HIT = """
-- KEYS: counter   ARGV: window (s). Returns {count, ms until the window ends}.
local n = redis.call('INCR', KEYS[1])
local left = redis.call('PTTL', KEYS[1])
if left < 0 then  -- the window's first hit (or a counter that lost its expiry)
  left = tonumber(ARGV[1]) * 1000
  redis.call('PEXPIRE', KEYS[1], left)
end
return {n, left}
"""

_REVOKE = """
-- KEYS: flag   ARGV: until (unix s). The later deadline wins.
local untl = tonumber(ARGV[1])
if untl <= tonumber(redis.call('TIME')[1]) then return 0 end
if untl <= tonumber(redis.call('GET', KEYS[1]) or 0) then return 0 end
redis.call('SET', KEYS[1], ARGV[1], 'EXAT', ARGV[1])
return 1
"""


_INDEX = """
-- KEYS: by-time, by-service (this receipt's), body, by-grant
-- ARGV: txid, time, receipt JSON, service, by-service key prefix, grant id
-- The last receipt completed for a txid is listed, once, under its service.
local old = redis.call('HGET', KEYS[3], ARGV[1])
if old then
  local was = cjson.decode(old)['service']
  if was ~= ARGV[4] then
    -- A txid taken over for another service (rare). Not among KEYS, but
    -- under the same hash tag, so in the same slot on the same node.
    redis.call('ZREM', ARGV[5] .. was, ARGV[1])
  end
end
redis.call('HSET', KEYS[3], ARGV[1], ARGV[3])
redis.call('ZADD', KEYS[1], ARGV[2], ARGV[1])
redis.call('ZADD', KEYS[2], ARGV[2], ARGV[1])
redis.call('HSET', KEYS[4], ARGV[6], ARGV[1])
return 1
"""

_RECEIPTS = """
-- KEYS: index (by-time, or one service's by-service), body, by-time
-- ARGV: since, until, limit, after, txid; '' for none, ids after a "="
-- Returns false for an `after` not indexed, else receipt bodies in order.
-- Members of equal score sort by their bytes: Lua's string '<' follows the
-- locale, so compare bytes here.
local function not_after(a, b)
  for i = 1, math.min(#a, #b) do
    local x, y = string.byte(a, i), string.byte(b, i)
    if x ~= y then return x < y end
  end
  return #a <= #b
end
local index = KEYS[1]
local after, txid = string.sub(ARGV[4], 2), string.sub(ARGV[5], 2)
local start = 0
if ARGV[1] ~= '' then start = redis.call('ZCOUNT', index, '-inf', '(' .. ARGV[1]) end
if ARGV[4] ~= '' then
  local t = redis.call('ZSCORE', KEYS[3], after)
  if not t then return false end
  -- The first rank past (t, after), among the members scored t.
  local lo = redis.call('ZCOUNT', index, '-inf', '(' .. t)
  local hi = redis.call('ZCOUNT', index, '-inf', t)
  while lo < hi do
    local mid = math.floor((lo + hi) / 2)
    if not_after(redis.call('ZRANGE', index, mid, mid)[1], after) then
      lo = mid + 1
    else
      hi = mid
    end
  end
  start = math.max(start, lo)
end
local stop = redis.call('ZCARD', index)
if ARGV[2] ~= '' then stop = redis.call('ZCOUNT', index, '-inf', '(' .. ARGV[2]) end
local out = {}
if ARGV[5] ~= '' then
  local rank = redis.call('ZRANK', index, txid)
  if rank and rank >= start and rank < stop then out[1] = redis.call('HGET', KEYS[2], txid) end
  return out
end
stop = math.min(stop, start + tonumber(ARGV[3]))
if start < stop then
  for _, txid in ipairs(redis.call('ZRANGE', index, start, stop - 1)) do
    out[#out + 1] = redis.call('HGET', KEYS[2], txid)
  end
end
return out
"""

_COUNT = """
-- KEYS: the day's counters   ARGV: field, increment, field, increment...
for i = 1, #ARGV, 2 do redis.call('HINCRBY', KEYS[1], ARGV[i], ARGV[i + 1]) end
return 1
"""

# Shared by the checkout scripts. KEYS: due, until, body. Forgets (a bounded
# number of) checkouts past their grace before anything else.
_CHECKOUTS = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local function forget(id)
  redis.call('ZREM', KEYS[1], id)
  redis.call('ZREM', KEYS[2], id)
  redis.call('HDEL', KEYS[3], id)
end
for _, id in ipairs(redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', now, 'LIMIT', 0, 100)) do
  forget(id)
end
"""

_WATCH = (
    _CHECKOUTS
    + """
-- ARGV: checkout, entry, due, until, most
local untl = tonumber(ARGV[4])
if untl <= now then return 0 end
if redis.call('HEXISTS', KEYS[3], ARGV[1]) == 1 then return 0 end
if redis.call('HLEN', KEYS[3]) >= tonumber(ARGV[5]) then return 0 end
redis.call('HSET', KEYS[3], ARGV[1], ARGV[2])
redis.call('ZADD', KEYS[1], ARGV[3], ARGV[1])
redis.call('ZADD', KEYS[2], ARGV[4], ARGV[1])
-- Nothing outlives the latest grace (EXPIRETIME: -1 when none is set).
for i = 1, 3 do
  if redis.call('EXPIRETIME', KEYS[i]) < untl then redis.call('EXPIREAT', KEYS[i], untl) end
end
return 1
"""
)

_DUE = (
    _CHECKOUTS
    + """
-- ARGV: limit, lease (s). Returns checkout, entry, checkout, entry...
-- The latest due first (see Store.due_checkouts): a look just due is not
-- queued behind a backlog of overdue ones.
local out = {}
local ids = redis.call('ZREVRANGEBYSCORE', KEYS[1], now, '-inf', 'LIMIT', 0, tonumber(ARGV[1]))
for _, id in ipairs(ids) do
  local body = redis.call('HGET', KEYS[3], id)
  local untl = tonumber(redis.call('ZSCORE', KEYS[2], id) or 0)
  if body and untl > now then
    redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), id)
    out[#out + 1] = id
    out[#out + 1] = body
  else
    forget(id)
  end
end
return out
"""
)

_UNWATCH = """
-- KEYS: due, until, body   ARGV: checkout
redis.call('ZREM', KEYS[1], ARGV[1])
redis.call('ZREM', KEYS[2], ARGV[1])
return redis.call('HDEL', KEYS[3], ARGV[1])
"""

_ADD_REFUND = """
-- KEYS: by-time, body, outpoints   ARGV: outpoint, time, refund JSON. Listed once per output.
if redis.call('HSETNX', KEYS[2], ARGV[1], ARGV[3]) == 0 then return 0 end
redis.call('ZADD', KEYS[1], ARGV[2], ARGV[1])
redis.call('ZADD', KEYS[3], 0, ARGV[1])
return 1
"""

_REFUNDS = """
-- KEYS: by-time, body, settled, outpoints
-- ARGV: since, limit, after (an outpoint), txid; '' for none, ids after a "="
-- Returns false for an `after` not listed, else body, settlement ('' for
-- none), body, settlement... in (time, outpoint) order.
local function not_after(a, b)
  for i = 1, math.min(#a, #b) do
    local x, y = string.byte(a, i), string.byte(b, i)
    if x ~= y then return x < y end
  end
  return #a <= #b
end
local index = KEYS[1]
local after, txid = string.sub(ARGV[3], 2), string.sub(ARGV[4], 2)
local start = 0
if ARGV[1] ~= '' then start = redis.call('ZCOUNT', index, '-inf', '(' .. ARGV[1]) end
if ARGV[3] ~= '' then
  local t = redis.call('ZSCORE', index, after)
  if not t then return false end
  local lo = redis.call('ZCOUNT', index, '-inf', '(' .. t)
  local hi = redis.call('ZCOUNT', index, '-inf', t)
  while lo < hi do
    local mid = math.floor((lo + hi) / 2)
    if not_after(redis.call('ZRANGE', index, mid, mid)[1], after) then
      lo = mid + 1
    else
      hi = mid
    end
  end
  start = math.max(start, lo)
end
local limit = tonumber(ARGV[2])
local ids = {}
if ARGV[4] ~= '' then
  -- Every output of the transaction: the outpoints "txid:..." sort between
  -- "txid:" and "txid;" (';' follows ':').
  local ranked = {}
  for _, id in ipairs(redis.call('ZRANGEBYLEX', KEYS[4], '[' .. txid .. ':', '(' .. txid .. ';')) do
    local rank = redis.call('ZRANK', index, id)
    if rank and rank >= start then ranked[#ranked + 1] = {rank, id} end
  end
  table.sort(ranked, function(a, b) return a[1] < b[1] end)
  for i = 1, math.min(#ranked, limit) do ids[i] = ranked[i][2] end
else
  local stop = math.min(redis.call('ZCARD', index), start + limit)
  if start < stop then ids = redis.call('ZRANGE', index, start, stop - 1) end
end
local out = {}
for _, id in ipairs(ids) do
  out[#out + 1] = redis.call('HGET', KEYS[2], id)
  out[#out + 1] = redis.call('HGET', KEYS[3], id) or ''
end
return out
"""

_BIND = """
-- KEYS: bound   ARGV: token, expires (unix s), most
-- Bound again: the new expiry stands (one past drops the token).
local now = tonumber(redis.call('TIME')[1])
redis.call('ZADD', KEYS[1], ARGV[2], ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
-- The `most` expiring last stay (ties: the greater token, as ZREVRANGE lists them).
redis.call('ZREMRANGEBYRANK', KEYS[1], 0, -(tonumber(ARGV[3]) + 1))
-- Nothing outlives the latest expiry (an emptied set is gone already).
local last = redis.call('ZRANGE', KEYS[1], -1, -1, 'WITHSCORES')
if last[2] then redis.call('EXPIREAT', KEYS[1], string.format('%d', tonumber(last[2]))) end
return 1
"""

_BOUND = """
-- KEYS: bound. The tokens not expired, the latest-expiring first.
local now = redis.call('TIME')[1]
return redis.call('ZREVRANGEBYSCORE', KEYS[1], '+inf', '(' .. now)
"""


# --- keys -----------------------------------------------------------------------------


def tag(name: str) -> str:
    """A hash tag for one id: braces escaped, never empty (see the module doc)."""
    if not name:
        return "{%}"
    escaped = name.replace("%", "%25").replace("{", "%7B").replace("}", "%7D")
    return "{" + escaped + "}"


class Keys:
    """Key names by operation; each list shares one hash tag, so one slot."""

    def __init__(self, prefix: str) -> None:
        if "{" in prefix or "}" in prefix:
            raise ValueError("the store key prefix may not contain '{' or '}'")
        self.prefix = prefix

    def claim(self, txid: str) -> list[str]:
        return [f"{self.prefix}claim:{tag(txid)}"]

    def tab(self, tab: str) -> list[str]:
        base = f"{self.prefix}tab:{tag(tab)}"
        return [base, f"{base}:held", f"{base}:due", f"{base}:once"]

    def lease(self, tab: str) -> list[str]:
        """A tab's keys and its recall (store/leases.py)."""
        base = f"{self.prefix}tab:{tag(tab)}"
        return [*self.tab(tab), f"{base}:recall", f"{base}:seqs"]

    def hit(self, key: str, window: int) -> list[str]:
        return [f"{self.prefix}hit:{tag(key)}:{window}"]

    def revoked(self, grant_id: str) -> list[str]:
        return [f"{self.prefix}revoked:{tag(grant_id)}"]

    def by_service(self, service: str = "") -> str:
        """The receipts index of one service (without `service`: the prefix of all)."""
        return f"{self.prefix}receipts:{{receipts}}:by-service:{service}"

    def index(self, service: str) -> list[str]:
        """What `complete` adds to: by-time, by-service, body, by-grant."""
        base = f"{self.prefix}receipts:{{receipts}}"
        return [f"{base}:by-time", self.by_service(service), f"{base}:body", self.by_grant()]

    def by_grant(self) -> str:
        """Grant id -> the txid of the receipt that names it."""
        return f"{self.prefix}receipts:{{receipts}}:by-grant"

    def receipts(self, service: str | None) -> list[str]:
        """What `receipts` reads: the index to walk, body, by-time."""
        by_time, _, body, _ = self.index("")
        return [by_time if service is None else self.by_service(service), body, by_time]

    def stats(self, day: str) -> list[str]:
        return [f"{self.prefix}stats:{tag(day)}"]

    def checkouts(self) -> list[str]:
        """The checkouts watched past their expiry: due, until, body."""
        base = f"{self.prefix}checkouts:{{checkouts}}"
        return [f"{base}:due", f"{base}:until", f"{base}:body"]

    def refunds(self) -> list[str]:
        """The refund list: by-time, body, settled, outpoints."""
        base = f"{self.prefix}refunds:{{refunds}}"
        return [f"{base}:by-time", f"{base}:body", f"{base}:settled", f"{base}:outpoints"]

    def bound(self, holder: str) -> list[str]:
        return [f"{self.prefix}bound:{tag(holder)}"]


# --- the store ------------------------------------------------------------------------


class RedisStore:
    def __init__(
        self,
        client: Client,
        *,
        prefix: str = "farebox:",
        pool_size: int = 50,
        timeout: float = 2.0,
        claim_ttl: int = CLAIM_TTL,
        closers: Sequence[Callable[[], Awaitable[Any]]] = (),
    ) -> None:
        self.keys = Keys(prefix)
        self._client = client
        self._timeout = timeout
        self._claim_ttl = claim_ttl
        self._closers = [client.aclose, *closers]
        # At most pool_size calls in flight: redis-py's pools raise instead of
        # waiting when exhausted, and a burst must queue, not fail.
        self._slots = asyncio.Semaphore(pool_size)
        # Registered once; EVALSHA, with SCRIPT LOAD on NOSCRIPT (a restarted
        # server, a new cluster node) done by redis-py's Script objects.
        self._claim = client.register_script(_CLAIM)
        self._complete = client.register_script(_COMPLETE)
        self._release = client.register_script(_RELEASE)
        self._credit = client.register_script(_CREDIT)
        self._reserve = client.register_script(_RESERVE)
        self._settle = client.register_script(_SETTLE)
        self._balance = client.register_script(_BALANCE)
        self._lease = client.register_script(_LEASE)
        self._hit = client.register_script(_HIT)
        self._revoke = client.register_script(_REVOKE)
        self._index = client.register_script(_INDEX)
        self._receipts = client.register_script(_RECEIPTS)
        self._count = client.register_script(_COUNT)
        self._watch = client.register_script(_WATCH)
        self._due = client.register_script(_DUE)
        self._unwatch = client.register_script(_UNWATCH)
        self._add_refund = client.register_script(_ADD_REFUND)
        self._refunds = client.register_script(_REFUNDS)
        self._bind = client.register_script(_BIND)
        self._bound = client.register_script(_BOUND)
        # The calls every metered or quota-counted request makes go out together:
        # those asked for within one event-loop turn share one pipeline, so one
        # round trip (see _send). The others are rare enough to go alone.
        self._batched = {self._reserve, self._settle, self._balance, self._hit, self._lease}
        self._batch: Coalescer[Op, Any] = Coalescer(self._send)

    @classmethod
    def from_url(
        cls, url: str, *, prefix: str = "farebox:", pool_size: int = 50, timeout: float = 2.0
    ) -> RedisStore:
        """A store for redis://, rediss://, redis+sentinel:// or redis+cluster:// URLs.

        redis[s]://[[user]:password@]host[:port][/db][?redis-py options]
        redis+sentinel://[[user]:password@]host:port[,host:port...]/service[/db]
            [?sentinel_username=...&sentinel_password=...]
            (user and password are the master's; the sentinels' are separate)
        redis+cluster://[[user]:password@]host:port[,host:port...]
        """
        Keys(prefix)  # refuse a bad prefix before any client exists
        scheme = url.partition("://")[0].lower()
        options = _client_options(pool_size, timeout)
        if scheme in ("redis", "rediss"):
            pool = BlockingConnectionPool.from_url(url, timeout=timeout, **options)
            client: Client = Redis.from_pool(pool)
            return cls(client, prefix=prefix, pool_size=pool_size, timeout=timeout)
        if scheme == "redis+sentinel":
            return cls._sentinel(url, options, prefix, pool_size, timeout)
        if scheme == "redis+cluster":
            return cls._cluster(url, options, prefix, pool_size, timeout)
        raise ValueError(f"not a Redis URL: {scheme}://")

    @classmethod
    def _sentinel(
        cls, url: str, options: dict[str, Any], prefix: str, pool_size: int, timeout: float
    ) -> RedisStore:
        parts = urlsplit(url)
        user, password, hosts = _netloc(parts.netloc)
        path = [p for p in parts.path.split("/") if p]
        if not 1 <= len(path) <= 2 or (len(path) == 2 and not path[1].isdigit()):
            raise ValueError("redis+sentinel:// needs /service_name[/db] after the hosts")
        query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
        sentinel_auth = {
            "username": query.get("sentinel_username"),
            "password": query.get("sentinel_password"),
        }
        sentinel = Sentinel(
            hosts,
            sentinel_kwargs={
                "socket_timeout": timeout,
                "socket_connect_timeout": timeout,
                **{k: v for k, v in sentinel_auth.items() if v},
            },
        )
        client = sentinel.master_for(
            unquote(path[0]),
            db=int(path[1]) if len(path) == 2 else 0,
            username=user,
            password=password,
            **options,
        )

        async def close_sentinels() -> None:
            await sentinel.aclose()

        return cls(
            client,
            prefix=prefix,
            pool_size=pool_size,
            timeout=timeout,
            closers=[close_sentinels],
        )

    @classmethod
    def _cluster(
        cls, url: str, options: dict[str, Any], prefix: str, pool_size: int, timeout: float
    ) -> RedisStore:
        parts = urlsplit(url)
        if parts.path.strip("/"):
            raise ValueError("redis+cluster:// takes no database: a cluster has only db 0")
        user, password, hosts = _netloc(parts.netloc)
        client = RedisCluster(
            startup_nodes=[ClusterNode(host, port) for host, port in hosts],
            username=user,
            password=password,
            **options,
        )
        return cls(client, prefix=prefix, pool_size=pool_size, timeout=timeout)

    # --- payments -----------------------------------------------------------------------
    async def claim(self, txid: str, purchase: str) -> Claim:
        # A fresh owner per call: a retry of this very call still sees NEW.
        owner = secrets.token_hex(8)
        reply = await self._run(
            self._claim, self.keys.claim(txid), [purchase, owner, self._claim_ttl]
        )
        outcome = Outcome(reply[0])
        if outcome is not Outcome.SAME:
            return Claim(outcome)
        receipt = Receipt.from_json(json.loads(reply[1])) if reply[1] else None
        return Claim(outcome, receipt, reply[2] or None)

    async def complete(self, txid: str, receipt: Receipt, token: str) -> None:
        purchase = f"{receipt.service}\n{receipt.resource}"
        body = json.dumps(receipt.to_json(), separators=(",", ":"))
        # The index first: should the claim write fail, the payer's retry
        # reaches `complete` again (the claim holds no receipt yet), whereas
        # a completed claim is answered from the claim alone.
        await self._run(
            self._index,
            self.keys.index(receipt.service),
            [
                receipt.txid,
                receipt.time,
                body,
                receipt.service,
                self.keys.by_service(),
                receipt.grant_id,
            ],
        )
        await self._run(self._complete, self.keys.claim(txid), [purchase, body, token])

    async def release(self, txid: str, purchase: str) -> None:
        await self._run(self._release, self.keys.claim(txid), [purchase])

    async def sold(self, grant_id: str) -> bool:
        key = self.keys.by_grant()
        return bool(await self._guard(lambda: self._client.hexists(key, grant_id)))

    async def accepted(self, txid: str, purchase: str) -> Claim | None:
        (key,) = self.keys.claim(txid)
        found = await self._guard(lambda: self._client.hmget(key, "purchase", "receipt", "token"))
        held, body, token = found  # decode_responses: str or None
        if held != purchase or not body or not token:
            return None
        return Claim(Outcome.SAME, Receipt.from_json(json.loads(body)), token)

    async def receipt(self, txid: str) -> Receipt | None:
        (key,) = self.keys.claim(txid)
        body = await self._guard(lambda: self._client.hget(key, "receipt"))
        return Receipt.from_json(json.loads(body)) if body else None

    async def receipts(
        self,
        *,
        since: int | None = None,
        until: int | None = None,
        service: str | None = None,
        txid: str | None = None,
        limit: int = 1000,
        after: str | None = None,
    ) -> list[Receipt]:
        args: list[Arg] = [
            "" if since is None else int(since),
            "" if until is None else int(until),
            page_limit(limit),
            "" if after is None else f"={after}",  # "=" marks a given id, even ""
            "" if txid is None else f"={txid}",
        ]
        bodies = await self._run(self._receipts, self.keys.receipts(service), args)
        if bodies is None:
            raise ValueError(f"no receipt {after!r} to page after")
        return [Receipt.from_json(json.loads(body)) for body in bodies]

    # --- tabs ---------------------------------------------------------------------------
    async def credit(self, tab: str, amount: int, once: str) -> tuple[int, bool]:
        _at_least("amount", amount, 0)
        balance, credited = await self._run(self._credit, self.keys.tab(tab), [amount, once])
        return int(balance), bool(credited)

    async def reserve(self, tab: str, amount: int, reservation: str, ttl: int) -> int | None:
        _at_least("amount", amount, 0)
        _at_least("ttl", ttl, 1)
        left = await self._run(self._reserve, self.keys.tab(tab), [amount, reservation, ttl])
        return None if left is None else int(left)

    async def settle(self, tab: str, reservation: str, charge: int) -> int:
        _at_least("charge", charge, 0)
        return int(await self._run(self._settle, self.keys.tab(tab), [reservation, charge]))

    async def refund(self, tab: str, reservation: str) -> int:
        return await self.settle(tab, reservation, 0)

    async def balance(self, tab: str) -> int | None:
        left = await self._run(self._balance, self.keys.tab(tab), [])
        return None if left is None else int(left)

    async def lease(self, tab: str, lease: str, sync: LeaseSync) -> Leased | None:
        """Sync, grow or give back the worker lease `lease` on `tab` (store/leases.py).

        None when `sync.need` is above 0 and there is no such tab. Atomic: one
        script; a resent call (`sync.seq` not above the last seen) changes
        nothing, and charges are sent as a running total, so neither a batch
        resent after a lost reply nor a call that ran after its caller gave up
        on it charges anything twice.
        """
        for name in ("charged", "inflight", "need", "expect", "kept"):
            _at_least(name, getattr(sync, name), 0)
        reply = await self._run(
            self._lease,
            self.keys.lease(tab),
            [
                lease,
                sync.seq,
                sync.charged,
                sync.inflight,
                sync.need,
                sync.ttl,
                int(sync.release),
                sync.expect,
                int(sync.recall * 1000),
                sync.kept,
            ],
        )
        if reply is None:
            return None
        balance, held, granted, pending, lost, charged, recalling = (int(v) for v in reply)
        return Leased(balance, held, granted, bool(pending), bool(lost), charged, bool(recalling))

    # --- quotas -------------------------------------------------------------------------
    async def hit(self, key: str, window: int) -> Window:
        _at_least("window", window, 1)
        count, left_ms = await self._run(self._hit, self.keys.hit(key, window), [window])
        return Window(int(count), max(1, math.ceil(int(left_ms) / 1000)))

    # --- revocations --------------------------------------------------------------------
    async def revoke(self, grant_id: str, until: int) -> None:
        await self._run(self._revoke, self.keys.revoked(grant_id), [int(until)])

    async def revoked(self, grant_id: str) -> bool:
        # Batched: when a grant's cached answer runs out, every request then in
        # flight on it asks at once (gateway/pipeline/credentials.py Revocations).
        return bool(await self._batch(("EXISTS", self.keys.revoked(grant_id), [])))

    # --- statistics ---------------------------------------------------------------------
    async def count(self, day: str, service: str, route: str, **fields: int) -> None:
        check_day(day)
        args: list[Arg] = []
        for name, value in check_counts(fields).items():
            args += [_stat(service, route, name), value]
        if args:
            await self._run(self._count, self.keys.stats(day), args)

    async def stats(
        self, *, since_day: str, until_day: str, service: str | None = None
    ) -> list[DayStats]:
        wanted = days(since_day, until_day)
        if not wanted:
            return []

        async def read() -> list[dict[str, str]]:
            # One round trip per node: each day is one key, spread over the slots.
            pipe = self._client.pipeline(transaction=False)
            for day in wanted:
                pipe.hgetall(self.keys.stats(day)[0])
            return await pipe.execute()

        found: list[DayStats] = []
        for day, fields in zip(wanted, await self._guard(read), strict=True):
            counters: dict[tuple[str, str], dict[str, int]] = {}
            for field, value in fields.items():
                name, route, counter = json.loads(field)
                if service in (None, name):
                    counters.setdefault((name, route), {})[counter] = int(value)
            found += [DayStats(day, n, r, c) for (n, r), c in sorted(counters.items())]
        return found

    # --- checkouts watched past their expiry -------------------------------------------
    async def watch_checkout(
        self, checkout: str, entry: str, due: int, until: int, most: int
    ) -> bool:
        args: list[Arg] = [checkout, entry, int(due), int(until), int(most)]
        return bool(await self._run(self._watch, self.keys.checkouts(), args))

    async def due_checkouts(self, limit: int, lease: int) -> list[tuple[str, str]]:
        _at_least("limit", limit, 1)
        flat = await self._run(self._due, self.keys.checkouts(), [int(limit), int(lease)])
        return list(zip(flat[::2], flat[1::2], strict=True))

    async def look_again(self, checkout: str, due: int) -> None:
        key = self.keys.checkouts()[0]
        # XX: only a checkout still watched (every one has a due time).
        await self._guard(lambda: self._client.zadd(key, {checkout: int(due)}, xx=True))

    async def unwatch_checkout(self, checkout: str) -> None:
        await self._run(self._unwatch, self.keys.checkouts(), [checkout])

    # --- the refund list ----------------------------------------------------------------
    async def add_refund(self, refund: Refund) -> bool:
        body = json.dumps(refund.settle("", 0).to_json(), separators=(",", ":"))
        by_time, kept, _, outpoints = self.keys.refunds()
        args: list[Arg] = [refund.outpoint, refund.time, body]
        return bool(await self._run(self._add_refund, [by_time, kept, outpoints], args))

    async def settle_refund(self, outpoint: str, how: str, at: int) -> bool:
        key = self.keys.refunds()[2]
        mark = json.dumps({"how": how, "time": int(at)}, separators=(",", ":"))
        return bool(await self._guard(lambda: self._client.hsetnx(key, outpoint, mark)))

    async def refunds(
        self,
        *,
        since: int | None = None,
        txid: str | None = None,
        limit: int = 1000,
        after: str | None = None,
    ) -> list[Refund]:
        args: list[Arg] = [
            "" if since is None else int(since),
            page_limit(limit),
            "" if after is None else f"={after}",  # "=" marks a given id, even ""
            "" if txid is None else f"={txid}",
        ]
        flat = await self._run(self._refunds, self.keys.refunds(), args)
        if flat is None:
            raise ValueError(f"no refund {after!r} to page after")
        found = []
        for body, mark in zip(flat[::2], flat[1::2], strict=True):
            refund = Refund.from_json(json.loads(body))
            found.append(refund.settle(**_settlement(mark)) if mark else refund)
        return found

    # --- tokens kept for holders --------------------------------------------------------
    async def bind(self, holder: str, token: str, expires: int) -> None:
        await self._run(self._bind, self.keys.bound(holder), [token, int(expires), MAX_BOUND])

    async def bound(self, holder: str) -> list[str]:
        return list(await self._run(self._bound, self.keys.bound(holder), []))

    # --- health -------------------------------------------------------------------------
    async def ping(self) -> None:
        await self._guard(self._client.ping)

    async def close(self) -> None:
        for closer in self._closers:
            # Closing connections to a dead server: nothing left to release.
            with contextlib.suppress(RedisError, RedisClusterException, OSError):
                await closer()

    # --- for other modules' scripts (gateway/payouts/ledgerredis.py) -------------------
    def script(self, source: str) -> AsyncScript:
        """A Lua script registered on this store's client (EVALSHA, loaded on demand)."""
        return self._client.register_script(source)

    async def run(self, script: AsyncScript, keys: list[str], args: list[Arg]) -> Any:
        """Run `script` as the store's own are run: bounded, StoreUnavailable on failure."""
        return await self._run(script, keys, args)

    # --- plumbing -----------------------------------------------------------------------
    async def _run(self, script: AsyncScript, keys: list[str], args: list[Arg]) -> Any:
        """One script call; the single place keys reach Redis (the slot test spies here).

        The scripts in `_batched` join the batch of this loop turn (_send);
        the others are sent alone. Either way StoreUnavailable on failure.
        """
        if script in self._batched:
            return await self._batch((script, keys, args))
        return await self._guard(lambda: script(keys=keys, args=args))

    async def _send(self, ops: list[Op]) -> list[Any]:
        """One batch in one round trip (one per node of a cluster): a reply or an error each.

        A pipeline without MULTI: each script stays atomic on its own, as when
        sent alone, and one failing (a script error, NOSCRIPT, a cluster's
        MOVED that redis-py could not follow) fails only its own caller, with
        StoreUnavailable. A batch that fails as a whole (no connection, no
        answer within `timeout`) raises StoreUnavailable, for every caller.
        A lost connection has the whole batch sent again (the client's Retry),
        as redis-py resends a lone command: the batched operations are
        retry-safe (a reservation id is held once, a settle repeated changes
        nothing, a read is a read), save `hit`, which may then count one
        request twice, as it may alone.
        """
        replies = await self._guard(lambda: self._pipeline(ops))
        return [StoreUnavailable(_reason(r)) if isinstance(r, Exception) else r for r in replies]

    async def _pipeline(self, ops: list[Op]) -> list[Any]:
        replies = await self._execute(ops)
        # NOSCRIPT (a restarted server, a failover, a new cluster node, SCRIPT
        # FLUSH): the script did not run. Load it (redis-py sends SCRIPT LOAD to
        # every primary of a cluster) and run those operations once more, as
        # redis-py's Script objects do for a lone call.
        lost = [i for i, reply in enumerate(replies) if isinstance(reply, NoScriptError)]
        if lost:
            scripts = {ops[i][0] for i in lost}
            for script in scripts:
                assert isinstance(script, AsyncScript)
                script.sha = await self._client.script_load(script.script)
            again = await self._execute([ops[i] for i in lost])
            for i, reply in zip(lost, again, strict=True):
                replies[i] = reply
        return replies

    async def _execute(self, ops: list[Op]) -> list[Any]:
        if isinstance(self._client, RedisCluster):
            # redis-py's cluster pipeline: one pipeline per node, MOVED/ASK followed.
            pipe = self._client.pipeline(transaction=False)
            for command, keys, args in ops:
                if isinstance(command, str):
                    pipe.execute_command(command, *keys, *args)
                else:
                    # EVALSHA by hand, not script(client=pipe): redis-py would then
                    # ask SCRIPT EXISTS before every pipeline, a second round trip.
                    pipe.execute_command("EVALSHA", command.sha, len(keys), *keys, *args)
            return list(await pipe.execute(raise_on_error=False))
        # One server (or Sentinel's master): the batch packed here in one buffer,
        # written at once and its replies read in order on one pooled connection.
        # redis-py's Pipeline does the same with several times the CPU per
        # command (its packing and bookkeeping were most of a metered request's
        # store cost). Its Connection still connects, finds the master, times
        # out, and disconnects on any failure or cancellation, so a half-read
        # connection never returns to the pool.
        packed = _pack(ops)
        pool = self._client.connection_pool
        connection = await pool.get_connection()
        try:
            return await connection.retry.call_with_retry(
                lambda: _exchange(connection, packed, len(ops)),
                lambda error: connection.disconnect(),
            )
        finally:
            await pool.release(connection)

    async def _guard(self, call: Callable[[], Awaitable[T]]) -> T:
        """Bound one call by `timeout` and turn every Redis failure into StoreUnavailable."""
        try:
            async with asyncio.timeout(self._timeout), self._slots:
                if isinstance(self._client, RedisCluster):
                    # redis-py routes commands sent before the slot map is
                    # loaded to an arbitrary node (MOVED storms, reconnects):
                    # load it first. A no-op once loaded.
                    await self._client.initialize()
                return await call()
        except TimeoutError:  # ours; redis-py's TimeoutError is a RedisError
            raise StoreUnavailable(f"no answer within {self._timeout:g} s") from None
        except (RedisError, RedisClusterException, OSError) as exc:
            raise StoreUnavailable(_reason(exc)) from exc
        except Exception as exc:
            # Only redis-py runs in here; an internal fault of the client (seen
            # under concurrent cluster reconnects) must fail closed too.
            raise StoreUnavailable(f"redis client failed: {exc!r}"[:160]) from exc


def _pack(ops: list[Op]) -> bytes:
    """The commands of `ops` in the Redis protocol (RESP arrays of bulk strings)."""
    out: list[bytes] = []
    for command, keys, args in ops:
        if isinstance(command, str):
            parts: list[Arg] = [command, *keys, *args]
        else:
            parts = ["EVALSHA", command.sha, len(keys), *keys, *args]
        out.append(b"*%d\r\n" % len(parts))
        for part in parts:
            data = str(part).encode()  # str or int, as redis-py's encoder writes them
            out += (b"$%d\r\n" % len(data), data, b"\r\n")
    return b"".join(out)


async def _exchange(connection: Any, packed: bytes, count: int) -> list[Any]:
    """Send `packed` and read its `count` replies; a Redis error reply is that entry."""
    await connection.send_packed_command(packed)
    replies: list[Any] = []
    for _ in range(count):
        try:
            replies.append(await connection.read_response())
        except ResponseError as error:  # read in full: the next reply follows
            replies.append(error)
    return replies


def _client_options(pool_size: int, timeout: float) -> dict[str, Any]:
    # A few quick retries with a fresh connection heal a restarted server or a
    # failover without restarting Farebox; the whole call stays bounded by
    # `timeout` in _guard, so a dead Redis still fails fast.
    retry = Retry(
        ExponentialBackoff(cap=0.2, base=0.02),
        retries=3,
        supported_errors=(RedisConnectionError, RedisTimeoutError),
    )
    return {
        "max_connections": pool_size,
        "socket_timeout": timeout,
        "socket_connect_timeout": timeout,
        "retry": retry,
        "decode_responses": True,
    }


def _netloc(netloc: str) -> tuple[str | None, str | None, list[tuple[str, int]]]:
    """user, password and (host, port) pairs of "[user[:password]@]h:p[,h:p...]"."""
    auth, _, hosts = netloc.rpartition("@")
    user, _, password = auth.partition(":")
    pairs = []
    for item in hosts.split(","):
        host, _, port = item.strip().rpartition(":")
        if not host or not port.isdigit():
            raise ValueError(f"expected host:port, got {item!r}")
        pairs.append((host.strip("[]"), int(port)))
    return unquote(user) or None, unquote(password) or None, pairs


def _stat(service: str, route: str, counter: str) -> str:
    """The field of one counter in a day's hash."""
    return json.dumps([service, route, counter], separators=(",", ":"), ensure_ascii=False)


def _settlement(mark: str) -> dict[str, Any]:
    """Refund.settle's arguments from a stored settlement."""
    data = json.loads(mark)
    return {"how": str(data["how"]), "at": int(data["time"])}


def _reason(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text if len(text) <= 160 else text[:157] + "..."


def _at_least(name: str, value: int, minimum: int) -> None:
    if value < minimum:
        raise ValueError(f"{name} must be at least {minimum}, not {value}")
