"""The devnet's command-line options, shared by `farebox devnet` and
`python -m gateway.devnet` (argparse only: cheap to import for --help)."""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The devnet's options, shared by `farebox devnet` and `python -m gateway.devnet`."""
    parser.add_argument(
        "--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)"
    )
    parser.add_argument("--port", type=int, default=8404, help="port (default 8404)")
    parser.add_argument(
        "--block-interval",
        type=float,
        default=10.0,
        metavar="SECONDS",
        help="mine pending transactions this often; 0 = only on POST /mine (default 10)",
    )
