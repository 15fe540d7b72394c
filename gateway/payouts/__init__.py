"""Payouts: money the other way, from Farebox to people (issue 15).

Everything else in Farebox takes money in; this package pays it out, with
the same care: participation rewards (a citizen answers a consultation
survey or votes, and is owed a reward once per campaign) and benefit
payouts (one list, many recipients, paid at once from a treasury wallet).

- `records`: payouts and batches as plain data, and a payout's life;
- `engine`: the one payout engine: owed payouts recorded before anything is
  signed, batched into transactions from the treasury wallet, broadcast,
  crash-safe and never paying an id twice (DESIGN.md, money rule 7);
- `ledgerfile`: the engine's ledger in a local SQLite file (benefit lists);
- `listfile`: a benefit list (`LIST.csv`) checked whole before anything is
  paid, and its result file (`LIST.result.csv`);
- `remittance`: what a recipient's BRC-100 wallet needs to take a payout in;
- `cli`: `farebox payouts send | status | show`.
"""
