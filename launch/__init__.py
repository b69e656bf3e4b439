"""Running the federation for real: Flower's SuperLink and SuperNodes over TLS with node authentication.

``launch_cli`` is ``python -m launch``: its argument parser and dispatch (and the three key-material subcommands).
The other subcommands are implemented in ``serve`` (``superlink``, ``supernode``: the server's and a device's
processes) and ``operator`` (``register``, ``run``, ``stop``). Beneath them: ``certs`` (key material),
``flower_commands`` (the command lines of Flower's own tools, built with the right flags), ``connection`` (the flwr
CLI's connection file), ``processes`` (ports and process trees), ``supervisor`` (a group of processes run and stopped
together), ``proxy`` (Caddy, the public port: the Fleet API only), ``task_launcher`` (Flower's SuperExec: task token on
stdin, approved app bundles only), ``approved_apps`` (bundle hashes), ``run_check`` (a run's config checked before
submission) and ``args`` (checks of command-line values). Logs of synthetic users to try a federation with come from
``python -m simulations.seed_logs``: nothing here knows of them.
"""
