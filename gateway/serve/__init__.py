"""Processes and wiring: no request logic lives here (see pipeline/)."""
