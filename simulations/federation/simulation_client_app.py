"""The simulation's ClientApp: the product ClientApp's functions, with synthetic users and the attack mod plugged in.

``client.client_app.make_client_app`` builds it around ``simulations.federation.device_data.simulated_device_data`` (node
config ``partition-id``, set by Flower's simulation or per user by a node slot, plays that synthetic user) and
installs ``simulations.federation.attacks.attack_mod`` (a malicious synthetic user plays the attack the round names). Flower's
simulation engine runs it (``simulations.run``), and so do the in-process grids of the benchmarks and tests; a
device never does (``flwr run`` and every SuperNode run ``client.client_app:app``, pyproject.toml).
"""

from __future__ import annotations

from client.client_app import make_client_app
from simulations.federation.attacks import attack_mod
from simulations.federation.device_data import simulated_device_data

app = make_client_app(simulated_device_data, mods=[attack_mod])
