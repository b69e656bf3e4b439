"""Running the federation for real: Flower's SuperLink and SuperNodes over TLS with node authentication.

``certs`` (key material), ``commands`` (Flower's command lines), ``connection`` (the flwr CLI's connection file),
``processes`` (ports and process trees) and ``cli`` (``python -m launch``; its ``seed-logs`` runs
``simulations.seed_logs``).
"""
