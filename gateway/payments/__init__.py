"""Payments: reading, checking and accepting BSV payments for a priced request."""
