"""Fuzz: the payment parsers and checks decide every input, with a reason.

Hypothesis feeds BEEF bytes (random, and mutations of real signed payments:
flipped, cut, spliced, repeated) and pay-endpoint fields of every JSON type
through the same path a payment takes — field checks (remittance), the BEEF
reader, then every check of verify_payment against a chain tracker. Only a
PaymentError with a machine-readable reason may come out (400, 402 or 413),
never another exception, and each input is decided within Hypothesis's
deadline (the script and ancestry limits bound the work).

`FAREBOX_PROPERTY_EXAMPLES=5000 ./dev test tests/test_payment_fuzz.py` runs
a longer search.
"""

from __future__ import annotations

import asyncio
import base64
import os
from datetime import timedelta

from bsv import PrivateKey
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.bsv.ancestry import AncestryLimits
from gateway.bsv.beef import Limits, read_beef
from gateway.bsv.derivation import p2pkh_script, payee_key
from gateway.errors import PaymentError
from gateway.payments.remittance import remittance
from gateway.payments.verify import Expectation, verify_payment
from tests.chainkit import Tracker, atomic_beef, beef_of, funding, pay, spend

EXAMPLES = int(os.environ.get("FAREBOX_PROPERTY_EXAMPLES", "200"))
SERVER = PrivateKey(0xF0221)
CLIENT = PrivateKey(0xC0FFEE)
TRACKER = Tracker()
PAID = pay(SERVER.public_key(), CLIENT, 500, TRACKER)
# An unconfirmed parent between the proven funding and the payment, to give
# the ancestry walk and the script checks something to do.
_GRAND = funding(CLIENT, 50_000, TRACKER)
_MIDDLE = spend(_GRAND, 0, CLIENT, [(CLIENT.public_key(), 49_000)])
DEEP = pay(SERVER.public_key(), CLIENT, 500, None, parent=_MIDDLE)
_PARENT = PAID.tx.inputs[0].source_transaction
SEEDS = [
    atomic_beef(PAID.tx),
    beef_of(_PARENT, PAID.tx),
    beef_of(_PARENT, PAID.tx, version=2),
    atomic_beef(DEEP.tx),
    beef_of(_GRAND, _MIDDLE, DEEP.tx),
]
EXPECT = Expectation(
    500, p2pkh_script(payee_key(SERVER, CLIENT.public_key(), PAID.prefix, PAID.suffix)), 0
)


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    data = bytearray(draw(st.sampled_from(SEEDS)))
    for _ in range(draw(st.integers(0, 4))):
        kind = draw(st.sampled_from(["flip", "cut", "insert", "repeat", "varint"]))
        at = draw(st.integers(0, max(0, len(data) - 1)))
        if kind == "flip" and data:
            data[at] ^= draw(st.integers(1, 255))
        elif kind == "cut":
            del data[at : at + draw(st.integers(1, 64))]
        elif kind == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=16))
        elif kind == "repeat":
            data[at:at] = data[at : at + draw(st.integers(1, 200))]
        else:  # a huge CompactSize where a count or a length is read
            data[at:at] = b"\xff" + draw(st.binary(min_size=8, max_size=8))
    return bytes(data)


beefs = st.one_of(mutated(), st.binary(max_size=512))


def _decide(data: bytes) -> None:
    try:
        beef = read_beef(data, Limits(max_bytes=100_000))
        asyncio.run(verify_payment(beef, EXPECT, TRACKER, AncestryLimits()))
    except PaymentError as exc:
        assert exc.reason and exc.status in (400, 402, 413), (exc.reason, exc.status)


@settings(max_examples=EXAMPLES, deadline=timedelta(seconds=2))
@given(data=beefs)
def test_any_beef_is_decided_with_a_reason(data: bytes) -> None:
    _decide(data)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=40),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3)
    ),
    max_leaves=6,
)
good_fields = {
    "beef": base64.b64encode(SEEDS[0]).decode(),
    "sender": CLIENT.public_key().hex(),
    "nonce": PAID.prefix,
    "time": base64.b64decode(PAID.suffix).decode(),
    "vout": 0,
}


@settings(max_examples=EXAMPLES, deadline=timedelta(seconds=2))
@given(
    replaced=st.dictionaries(st.sampled_from(sorted(good_fields)), json_values, max_size=5),
    dropped=st.sets(st.sampled_from(sorted(good_fields))),
)
def test_any_payment_fields_are_decided_with_a_reason(
    replaced: dict[str, object], dropped: set[str]
) -> None:
    fields = {k: v for k, v in {**good_fields, **replaced}.items() if k not in dropped}
    try:
        payment = remittance(fields, 100_000)
    except PaymentError as exc:
        assert exc.reason and exc.status in (400, 402, 413), (exc.reason, exc.status)
        return
    _decide(payment.beef)
