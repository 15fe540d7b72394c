"""Payouts: money the other way, from Farebox to people (issue 15).

Everything else in Farebox takes money in; this package pays it out, with
the same care: participation rewards (a citizen answers a consultation
survey or votes, and is owed a reward once per campaign) and benefit
payouts (one list, many recipients, paid at once from a treasury wallet).

`listfile` reads and checks a benefit list (`LIST.csv`: id, recipient,
satoshis, memo) whole before anything is paid, and writes its result file
(`LIST.result.csv`) atomically. The payout engine — owed payouts recorded
in the store before anything is sent, batched into transactions from the
treasury, crash-safe and never paying an id twice — is to come.
"""
