"""Synthetic users whose tastes drift: the world, personas, sessions and their event logs."""
