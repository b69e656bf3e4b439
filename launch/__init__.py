"""Running the federation for real: Flower's SuperLink and SuperNodes over TLS with node authentication.

``certs`` (key material), ``commands`` (Flower's command lines), ``connection`` (the flwr CLI's connection file),
``processes`` (ports and process trees), ``supervisor`` (a group of processes run and stopped together), ``proxy``
(Caddy, the public port: the Fleet API only), ``task_launcher`` (Flower's SuperExec: task token on stdin, approved app
bundles only), ``approved_apps`` (bundle hashes), ``serve`` (the server's and a device's processes), ``operator``
(register, run, stop), ``run_check`` (a run's config checked before submission), ``args`` and ``launch_cli``
(``python -m launch``). Logs of synthetic users to try a federation with come from ``python -m simulations.seed_logs``:
nothing here knows of them.
"""
