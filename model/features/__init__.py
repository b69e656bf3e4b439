"""From events to the network's inputs, and the simple heuristics computed on them."""
