"""Typed errors of the privacy package."""


class PrivacyConfigError(ValueError):
    """A privacy setting that cannot work; the message names the key, the value and the allowed range."""
