"""Rules every settings dataclass states its bounds with, so each bad value gets the same clear message."""
