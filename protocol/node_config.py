"""The node config keys a device's SuperNode is started with (``flower-supernode --node-config``).

Kept apart from ``client.data_source`` so that tools which only start nodes (``python -m launch``) need
not import torch.
"""

LOG_DB = "log-db"
"""Path of the device's behaviour log, a ``client.log_store.LogStore`` SQLite file."""
PARTITION_ID = "partition-id"
"""Instead of a log: train on this synthetic user (Flower's simulation sets it)."""
LEDGER_PATH = "ledger-path"
"""Where the device keeps its record-level privacy ledger (default: next to the log)."""
PRIVACY_POLICY = "privacy-policy"
"""A JSON file of the device owner's privacy policy (``client.privacy_policy``); without it the safe defaults hold."""
DEVICE_STORAGE = "device-storage"
"""The device's own folder where its app keeps what the federation gave it (the last global prior) and what it
made (audio); default: ``<log>.device/`` next to the log (``client.received_prior``). Read on the device only."""
