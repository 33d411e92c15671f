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


class SignatureError(ContractError):
    """A manifest whose signature is missing, malformed or made by another key."""
