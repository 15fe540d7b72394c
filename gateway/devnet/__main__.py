"""`python -m gateway.devnet --port N`: run the devnet standalone."""

from gateway.devnet.http import main

main()
