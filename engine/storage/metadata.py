"""YAML metadata under ``_warmstart/`` (a trial's ``config.yaml``, the suite manifest), sealed
with a checksum so that a damaged file is one line naming it, never a wrong answer.

A sealed file is YAML whose first line is a comment, ``# sha256: <hex of the rest>``: still
plain YAML for a person or another tool, and a truncated or altered file no longer matches.
A file without that line (written before it existed) is read as it is.
"""

from __future__ import annotations

import hashlib

import yaml

from engine.errors import ConfigError

SEAL = b"# sha256: "


def seal(text: str) -> bytes:
    body = text.encode()
    return SEAL + hashlib.sha256(body).hexdigest().encode() + b"\n" + body


def unseal(raw: bytes, name: str, what: str, remedy: str) -> dict:
    """The mapping a sealed (or older, unsealed) YAML file holds; a ConfigError naming
    ``name`` (the object's path or URI) when it is damaged: a checksum that does not match,
    not UTF-8, not YAML, or not a mapping."""

    def damaged(why: str) -> ConfigError:
        return ConfigError(f"The {what} {name} is damaged ({why}); {remedy}.")

    body = raw
    if raw.startswith(SEAL):
        digest, _, body = raw[len(SEAL) :].partition(b"\n")
        if hashlib.sha256(body).hexdigest().encode() != digest.strip():
            raise damaged("truncated or altered: its checksum does not match")
    try:
        data = yaml.safe_load(body.decode())
    except UnicodeDecodeError:
        raise damaged("not UTF-8 text") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise damaged(f"not YAML{where}") from None
    if not isinstance(data, dict):
        raise damaged(f"not a YAML mapping but {type(data).__name__}")
    return data
