"""Sign-In with Ethereum messages (EIP-4361): parse the text, recover the EIP-191 signer.

Parsed here rather than with the ``siwe`` package so the edge does not import web3 at start;
the tests sign messages built by ``siwe`` itself, which keeps this parser honest.
"""

from __future__ import annotations

import re
from datetime import datetime

import msgspec

# EIP-4361 "Message Format" (ABNF), as a regular expression over the whole message.
_MESSAGE = re.compile(
    r"\A(?:(?P<scheme>[a-zA-Z][a-zA-Z0-9+\-.]*)://)?(?P<domain>[^\s/?#]+)"
    r" wants you to sign in with your Ethereum account:\n"
    r"(?P<address>0x[a-fA-F0-9]{40})\n\n"
    r"(?:(?P<statement>[^\n]+)\n)?\n"
    r"URI: (?P<uri>\S+)\n"
    r"Version: (?P<version>1)\n"
    r"Chain ID: (?P<chain_id>[0-9]+)\n"
    r"Nonce: (?P<nonce>[a-zA-Z0-9]{8,})\n"
    r"Issued At: (?P<issued_at>\S+)"
    r"(?:\nExpiration Time: (?P<expiration_time>\S+))?"
    r"(?:\nNot Before: (?P<not_before>\S+))?"
    r"(?:\nRequest ID: (?P<request_id>[^\n]*))?"
    r"(?:\nResources:(?P<resources>(?:\n- \S+)*))?\Z"
)


class MalformedMessage(Exception):
    """Not an EIP-4361 message; the text says what is wrong."""


class SiweMessage(msgspec.Struct, kw_only=True):
    domain: str
    address: str
    uri: str
    chain_id: int
    nonce: str
    issued_at: datetime
    expiration_time: datetime | None = None
    not_before: datetime | None = None
    scheme: str | None = None
    statement: str | None = None


def _time(text: str | None, field: str) -> datetime | None:
    if text is None:
        return None
    try:
        value = datetime.fromisoformat(text)  # RFC 3339 date-time, "Z" included (Python 3.11+)
    except ValueError:
        raise MalformedMessage(f"{field} is not an RFC 3339 date-time") from None
    if value.tzinfo is None:
        raise MalformedMessage(f"{field} has no time zone")
    return value


def parse_message(text: str) -> SiweMessage:
    from eth_utils import is_checksum_address

    match = _MESSAGE.match(text)
    if match is None:
        raise MalformedMessage("not an EIP-4361 Sign-In with Ethereum message")
    address = match["address"]
    if not is_checksum_address(address):
        raise MalformedMessage("the address is not in EIP-55 checksum form")
    # int() refuses more than 4300 digits with ValueError (a 500 before issue 14); EIP-155 ids
    # are far below 2**64.
    if len(match["chain_id"]) > 20:
        raise MalformedMessage("Chain ID is out of range")
    issued_at = _time(match["issued_at"], "Issued At")
    assert issued_at is not None  # the pattern requires the field
    return SiweMessage(
        domain=match["domain"], address=address, uri=match["uri"],
        chain_id=int(match["chain_id"]), nonce=match["nonce"],
        issued_at=issued_at,
        expiration_time=_time(match["expiration_time"], "Expiration Time"),
        not_before=_time(match["not_before"], "Not Before"),
        scheme=match["scheme"], statement=match["statement"],
    )


def _rfc3339(value: datetime) -> str:
    return value.isoformat(timespec="seconds").replace("+00:00", "Z")


def format_message(message: SiweMessage) -> str:
    """The EIP-4361 text of ``message``: the one format this module also parses."""
    head = f"{message.scheme}://{message.domain}" if message.scheme else message.domain
    lines = [f"{head} wants you to sign in with your Ethereum account:", message.address, ""]
    if message.statement:
        lines.append(message.statement)
    lines += ["", f"URI: {message.uri}", "Version: 1", f"Chain ID: {message.chain_id}",
              f"Nonce: {message.nonce}", f"Issued At: {_rfc3339(message.issued_at)}"]
    if message.expiration_time is not None:
        lines.append(f"Expiration Time: {_rfc3339(message.expiration_time)}")
    if message.not_before is not None:
        lines.append(f"Not Before: {_rfc3339(message.not_before)}")
    return "\n".join(lines)


def recover_signer(text: str, signature: str) -> str | None:
    """The EIP-55 address that signed ``text`` with EIP-191 ``personal_sign``; None if unreadable."""
    from eth_account import Account
    from eth_account.messages import encode_defunct

    try:
        return Account.recover_message(encode_defunct(text=text), signature=signature)
    except Exception:  # eth-account raises several types for a malformed signature
        return None
