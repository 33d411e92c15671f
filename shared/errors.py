"""Errors shared by both sides; a `UserError` is printed as one line, never a traceback."""

from __future__ import annotations


class UserError(Exception):
    """Something the user can fix: the message says what is wrong and what to do."""


class ContractError(ValueError):
    """A payload, topic or manifest that breaks the shared contract."""


class TopicError(ContractError):
    """A topic outside the `lepton/v1/dev/{id}/{kind}` tree."""


class MessageError(ContractError):
    """A payload that fails validation; `field` names the first offending field."""

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(f"{field}: {reason}" if field else reason)
        self.field = field
        self.reason = reason


class BundleInvalid(ContractError):
    """A bundle folder that does not check out: no readable manifest, or a file it needs is
    missing (see `shared.bundle.verify_bundle`)."""


class SignatureError(BundleInvalid):
    """A manifest whose signature is missing, malformed or made by another key, or a file whose
    bytes differ from what the signed manifest pins (size, sha256)."""
