"""Durable file writes shared by every package (model, client, server, simulations, generation)."""
