"""The SIWE parser on hostile text: a message or MalformedMessage, never another exception (issue 14)."""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from intake_support import edge  # noqa: F401

from streamgate.edge.access.siwe import MalformedMessage, parse_message

VALID = ("videos.example wants you to sign in with your Ethereum account:\n"
         "0x5aAeb6053F3E94C9b9A09f33669435E7Ef1BeAed\n\nSign in to StreamGate.\n\n"
         "URI: https://videos.example/\nVersion: 1\nChain ID: 1\nNonce: abcdefgh1234\n"
         "Issued At: 2026-01-01T00:00:00Z\nExpiration Time: 2026-01-02T00:00:00Z")


def _parses_or_refuses(text: str) -> None:
    try:
        parse_message(text)
    except MalformedMessage:
        pass


def test_the_valid_message_parses() -> None:
    assert parse_message(VALID).chain_id == 1


def test_a_chain_id_past_pythons_int_digit_limit_is_malformed() -> None:
    text = VALID.replace("Chain ID: 1", "Chain ID: " + "9" * 5000)
    try:
        parse_message(text)
    except MalformedMessage as exc:
        assert "Chain ID" in str(exc)
    else:
        raise AssertionError("accepted")


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_mutated_messages_parse_or_are_malformed(data: st.DataObject) -> None:
    text = VALID
    for _ in range(data.draw(st.integers(1, 4))):
        at = data.draw(st.integers(0, len(text)))
        cut = data.draw(st.integers(0, 8))
        insert = data.draw(st.one_of(st.text(max_size=8), st.sampled_from(["9" * 5000, "\n", "Z", "+99:99", "0x"])))
        text = text[:at] + insert + text[at + cut:]
    _parses_or_refuses(text)


async def test_verify_answers_400_for_a_huge_chain_id(edge) -> None:  # noqa: F811
    e = await edge()
    text = VALID.replace("Chain ID: 1", "Chain ID: " + "9" * 5000)
    async with e.session.post(e.url + "/api/v1/auth/verify", json={"message": text, "signature": "0x00"}) as r:
        assert r.status == 400, await r.text()
