"""The errors medfed raises on purpose. Each message says what was wrong and what is valid."""

from __future__ import annotations


class MedfedError(Exception):
    """Base class: a user-facing error, printed as one line by the CLI (exit status 2)."""


class ConfigError(MedfedError):
    """A configuration key or value is unknown or invalid."""


class DataError(MedfedError):
    """A data file is missing, unreadable, or cannot be split as asked."""


class StateError(MedfedError):
    """A state folder or its audit trail cannot be used as it is (locked, missing, corrupt, or
    disagreeing with each other); the message says what to do."""


class IncompatibleUpdate(MedfedError):
    """A site's update does not match the global model (keys, shapes, dtypes, values)."""


class TransportError(MedfedError):
    """A message could not be delivered to or from a site."""


class NotEnoughSites(MedfedError):
    """Too few sites returned a usable update to close a round."""


class PrivacyBudgetExhausted(TransportError):
    """A site whose privacy budget (target epsilon) is spent trains no more; recorded as a failed
    site, as any site failure is."""


class BadReply(TransportError, IncompatibleUpdate):
    """A site's answer broke the protocol (malformed, oversized, out of bounds, a replay): that
    site's failure for that task, recorded like a missed deadline, never the server's exit. It is
    both a TransportError and an IncompatibleUpdate, so every path that records one records it."""


class JobAborted(MedfedError):
    """An administrator aborted the running job (medfed job abort)."""
