"""Errors of the access part (subclasses of the project-wide ones in ``trustzones.errors``)."""

from __future__ import annotations

from trustzones.errors import ConfigError, TrustzonesError

__all__ = ["AccessRequestError", "CredentialStoreError", "PolicyLoadError"]


class PolicyLoadError(ConfigError):
    """A Cedar policy (custom or generated) failed to parse or validate; names the file."""


class CredentialStoreError(TrustzonesError):
    """The credential store file cannot be used (permissions too open, wrong key, corrupt)."""


class AccessRequestError(TrustzonesError):
    """A just-in-time request, approval, revocation or break-glass could not be carried out
    because of its input or state (unknown id, not pending, bad duration, missing reason)."""
