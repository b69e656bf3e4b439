"""The client <-> server contract: instructions, record layout, node-config keys."""
