"""Weighted lists: Accept and Accept-Language as RFC 9110 writes them.

    Accept-Language: es-MX, es;q=0.9, en;Q=0.5
    Accept: text/html, application/json;q=0.9

Each member may carry a weight (section 12.4.2): a parameter named `q`, in
any case, whose value is 0 to 1 with at most three decimals. A weight that
is not one (`q=2`, `q=inf`, `q=nan`, `q=abc`) is read as 0: not wanted,
rather than guessed at.

A header is a client's to make as long as the server's field limit allows
(64 KiB in production), and anyone can send one to any URL: only its first
`MOST_CHARS` characters and `MOST_MEMBERS` members are read, so weighing one
costs the same small, bounded work however long it is. Browsers send a few
members in a few dozen characters.
"""

from __future__ import annotations

import re

MOST_CHARS = 1024  # the part of a header that is read
MOST_MEMBERS = 32  # the members of that part that are read
# RFC 9110 section 12.4.2: qvalue = ( "0" [ "." 0*3DIGIT ] ) / ( "1" [ "." 0*3("0") ] )
_QVALUE = re.compile(r"0(\.[0-9]{0,3})?|1(\.0{0,3})?")


def weighed(header: str | None) -> list[tuple[str, float]]:
    """The members of a weighted list, in the order sent: (value, weight).

    The value is the member without its parameters, stripped (its case kept);
    empty members are left out, a member's weight is 1 unless its q says
    otherwise, and weights of 0 are kept (an explicit refusal).
    """
    if not header:
        return []
    text = header[:MOST_CHARS]
    members = text.split(",", MOST_MEMBERS)
    if len(members) > MOST_MEMBERS:
        members.pop()  # the rest: not read
    elif len(header) > MOST_CHARS:
        members.pop()  # cut off where the part read ends: its weight may be gone
    weighted: list[tuple[str, float]] = []
    for member in members:
        value, *params = member.split(";")
        value = value.strip()
        if not value:
            continue
        weight = 1.0
        for param in params:
            name, _, given = param.partition("=")
            if name.strip().lower() == "q":
                given = given.strip()
                weight = float(given) if _QVALUE.fullmatch(given) else 0.0
        weighted.append((value, weight))
    return weighted
