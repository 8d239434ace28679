"""The README's configuration reference stays true: every key, with its default and env name."""

from __future__ import annotations

import re
from pathlib import Path

import msgspec

from streamgate.common.config import ENV_OVERRIDES, Config, _enc_hook

README = Path(__file__).resolve().parents[2] / "README.md"


def keys(obj: msgspec.Struct, prefix: tuple[str, ...] = ()):  # type: ignore[no-untyped-def]
    for field in msgspec.structs.fields(obj):
        value = getattr(obj, field.name)
        if isinstance(value, msgspec.Struct):
            yield from keys(value, (*prefix, field.name))
        else:
            yield (*prefix, field.name), value


def shown(value: object) -> str:
    try:
        value = _enc_hook(value)
    except NotImplementedError:
        pass
    if isinstance(value, bool):
        return str(value).lower()
    if value == "":
        return '""'
    return str(value)


def test_every_config_key_is_documented_with_its_default() -> None:
    rows = {m.group(1): m for m in re.finditer(r"^\| `([a-z_.0-9]+)` \| `([^`]*)` \| ([^|]*)\|", README.read_text(), re.M)}
    env_of = {path: name for name, path in ENV_OVERRIDES.items()}
    for path, default in keys(Config()):
        key = ".".join(path)
        assert key in rows, f"README's configuration reference lacks {key}"
        assert rows[key].group(2) == shown(default), f"README shows a stale default for {key}"
        if path in env_of:
            assert env_of[path] in rows[key].group(3), f"README does not name {env_of[path]} for {key}"
