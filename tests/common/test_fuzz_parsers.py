"""Fuzzing the parsers of untrusted text (issue 14): tus Upload-Metadata, SIWE messages, config.

Each parser answers its own error type and nothing else: a crash of any other kind is a 500 to a
client (metadata, SIWE) or a traceback instead of a message naming the key (config). Modest counts
here; the ``slow`` variants run the same properties far longer (make test-fuzz).
"""

from __future__ import annotations

import base64
import string
import typing
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import msgspec
import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from streamgate.common.config import Config, ConfigError, config_from_tree, load_config
from streamgate.edge.access.siwe import MalformedMessage, SiweMessage, format_message, parse_message
from streamgate.edge.intake.metadata import metadata_text, parse_metadata

QUICK = settings(max_examples=100, deadline=None, database=None, derandomize=True,
                 suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
LONG = settings(max_examples=2000, deadline=None, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])

# ---------------------------------------------------------------- tus Upload-Metadata

_keys = st.text(alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters=" ,\t\n\r\x0b\x0c"
                                       "\x1c\x1d\x1e\x1f\x85\xa0\u1680\u2028\u2029\u3000"),
                min_size=1, max_size=12).filter(lambda k: not any(c.isspace() for c in k))
_headerish = st.text(alphabet=string.printable + "é\u00a0\x00", max_size=80)


def _metadata_never_crashes(header: str) -> None:
    try:
        pairs = parse_metadata(header)
    except ValueError:
        return
    for key in pairs:
        try:
            metadata_text(pairs, key)
        except ValueError:
            pass


def _metadata_round_trip(values: dict[str, bytes]) -> None:
    header = ",".join(f"{k} {base64.b64encode(v).decode()}".rstrip() for k, v in values.items())
    pairs = parse_metadata(header)
    assert {k: base64.b64decode(v) for k, v in pairs.items()} == values


@QUICK
@given(_headerish)
def test_upload_metadata_parser_raises_only_value_error(header: str) -> None:
    _metadata_never_crashes(header)


@QUICK
@given(st.dictionaries(_keys, st.binary(max_size=24), max_size=5))
def test_upload_metadata_round_trips(values: dict[str, bytes]) -> None:
    _metadata_round_trip(values)


@pytest.mark.slow
@pytest.mark.timeout(1800)
@LONG
@given(_headerish)
def test_upload_metadata_parser_raises_only_value_error_long(header: str) -> None:
    _metadata_never_crashes(header)


# ---------------------------------------------------------------- SIWE


def _checksum(raw: bytes) -> str:
    from eth_utils import to_checksum_address

    return to_checksum_address("0x" + raw.hex())


_times = st.datetimes(min_value=datetime(2000, 1, 1), max_value=datetime(2100, 1, 1)).map(
    lambda t: t.replace(microsecond=0, tzinfo=UTC))
_token = st.text(alphabet=string.ascii_letters + string.digits + "-._~:/?#[]@!$&'()*+,;=%", min_size=1, max_size=30)


@st.composite
def siwe_messages(draw: st.DrawFn) -> SiweMessage:
    issued = draw(_times)
    return SiweMessage(
        domain=draw(st.from_regex(r"\A[a-z0-9.-]{1,20}(:[0-9]{1,5})?\Z")),
        address=_checksum(draw(st.binary(min_size=20, max_size=20))),
        uri=draw(_token), chain_id=draw(st.integers(0, 2**63)),
        nonce=draw(st.text(alphabet=string.ascii_letters + string.digits, min_size=8, max_size=32)),
        issued_at=issued,
        expiration_time=draw(st.none() | st.just(issued + timedelta(hours=1))),
        not_before=draw(st.none() | st.just(issued)),
        scheme=draw(st.none() | st.sampled_from(["http", "https"])),
        statement=draw(st.none() | st.text(alphabet=string.ascii_letters + " .,!", min_size=1, max_size=40)
                       .filter(lambda s: s.strip() == s and s != "")),
    )


def _siwe_never_crashes(text: str) -> None:
    try:
        message = parse_message(text)
    except MalformedMessage:
        return
    assert isinstance(message, SiweMessage)


@st.composite
def mutated_siwe(draw: st.DrawFn) -> str:
    text = format_message(draw(siwe_messages()))
    for _ in range(draw(st.integers(1, 4))):
        at = draw(st.integers(0, len(text)))
        kind = draw(st.sampled_from(["insert", "delete", "replace", "truncate"]))
        char = draw(st.characters(blacklist_categories=("Cs",)))
        if kind == "insert":
            text = text[:at] + char + text[at:]
        elif kind == "delete":
            text = text[:at] + text[at + 1:]
        elif kind == "replace":
            text = text[:at] + char + text[at + 1:]
        else:
            text = text[:at]
    return text


@QUICK
@given(siwe_messages())
def test_siwe_format_then_parse_round_trips(message: SiweMessage) -> None:
    assert parse_message(format_message(message)) == message


@QUICK
@given(mutated_siwe() | st.text(max_size=300))
def test_siwe_parser_raises_only_malformed_message(text: str) -> None:
    _siwe_never_crashes(text)


@pytest.mark.slow
@pytest.mark.timeout(1800)
@LONG
@given(mutated_siwe() | st.text(max_size=600))
def test_siwe_parser_raises_only_malformed_message_long(text: str) -> None:
    _siwe_never_crashes(text)


# ---------------------------------------------------------------- config

_scalars = (st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.floats(allow_nan=True)
            | st.text(max_size=12) | st.sampled_from(["30s", "1h", "-1s", "10MiB", "nan", "inf", "1e400",
                                                     "99999999999999999999d", "", "0", "fleet", "s3"]))


def _fields(kind: type) -> dict[str, Any]:
    return typing.get_type_hints(kind) if isinstance(kind, type) and issubclass(kind, msgspec.Struct) else {}


@st.composite
def config_trees(draw: st.DrawFn) -> Any:
    """Mostly the real key paths with wrong, odd or right values; sometimes unknown keys or shapes."""
    def value_for(kind: Any, depth: int) -> Any:
        fields = _fields(kind)
        if fields and depth < 4 and draw(st.integers(0, 9)) > 0:
            names = draw(st.lists(st.sampled_from(sorted(fields)) | st.text(max_size=6), max_size=5))
            return {n: value_for(fields.get(n), depth + 1) for n in names}
        return draw(_scalars | st.lists(_scalars, max_size=3) | st.dictionaries(st.text(max_size=4), _scalars,
                                                                                 max_size=2))
    if draw(st.integers(0, 19)) == 0:
        return draw(_scalars | st.lists(_scalars, max_size=2))
    return value_for(Config, 0)


def _config_only_config_error(tree: Any) -> None:
    try:
        config = config_from_tree(tree)
    except ConfigError:
        return
    assert isinstance(config, Config)


@QUICK
@given(config_trees())
def test_config_from_tree_raises_only_config_error(tree: Any) -> None:
    _config_only_config_error(tree)


@QUICK
@given(config_trees(), st.dictionaries(st.sampled_from(["STREAMGATE__SERVER__PORT", "STREAMGATE__EDGE__X",
                                                         "SERVER_PORT", "STREAMGATE_DATA_DIR",
                                                         "STREAMGATE__SERVER", "STREAMGATE__",
                                                         "STREAMGATE__STORAGE__MIN_FREE_SPACE"]),
                                       st.text(max_size=10), max_size=3))
def test_load_config_raises_only_config_error(tmp_path: Path, tree: Any, env: dict[str, str]) -> None:
    path = tmp_path / "config.yaml"
    try:
        path.write_text(yaml.safe_dump(tree))
    except yaml.YAMLError:
        return
    try:
        config = load_config(path, env=env)
    except ConfigError:
        return
    assert isinstance(config, Config)


@QUICK
@given(st.text(max_size=200))
def test_load_config_of_arbitrary_text_raises_only_config_error(tmp_path: Path, text: str) -> None:
    path = tmp_path / "config.yaml"
    path.write_text(text)
    try:
        load_config(path, env={})
    except ConfigError:
        pass


@pytest.mark.slow
@pytest.mark.timeout(1800)
@LONG
@given(config_trees())
def test_config_from_tree_raises_only_config_error_long(tree: Any) -> None:
    _config_only_config_error(tree)
