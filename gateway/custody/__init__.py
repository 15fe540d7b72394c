"""Key custody: rotating the keys Farebox holds, and sweeping what was paid to it.

`rotate`: token signing keys (a ring: add, prune) and the server identity key
(replace, keeping the old one as `<file>.previous`). `sweep`: spending every
output clients paid to the server key into a treasury address.
"""
