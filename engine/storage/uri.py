"""Results locations: every ``--out``, results path and report folder is parsed and normalised
here, once, before anything uses it.

A location is a local path (``results/x``, ``~/r``, ``/data/r``; ``file:///data/r`` is the
same path and becomes it) or an object store's URI, ``s3://BUCKET/KEY`` or ``gs://BUCKET/KEY``
(the key may be empty: the bucket's root).  An object store's key is a name, not a path:
pyarrow writes ``a/../b`` under ``b/`` but lists the literal ``a/../b/``, so a run would not
find its own rows.  A URI is therefore refused, in one line, when its key has a ``.`` or ``..``
segment or an empty one (``s3://b//d``), when its bucket is missing (``s3://``, ``s3:///x``),
when its scheme is unknown (``s3a://``) or not in lower case (``S3://``), or when it has a query
or fragment (the endpoint and credentials come from the environment, never from the URI).
Trailing slashes are dropped: ``s3://b/x/`` is ``s3://b/x``.
"""

from __future__ import annotations

import re
from urllib.parse import unquote

from engine.errors import ConfigError

# The object stores pyarrow reaches, by scheme; ``file`` is a local path.
OBJECT_SCHEMES = ("s3", "gs")
_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*")
_LOOKALIKES = {"s3a": "s3", "s3n": "s3", "gcs": "gs"}  # other tools' names for the same stores


def normalise(location: str, what: str = "--out") -> str:
    """``location`` in its one normal form: a local path as given (``file://`` URIs become
    their path), or ``SCHEME://BUCKET[/KEY]`` with no trailing slash.  A ConfigError (one
    line naming ``what`` and the fix) for anything else."""
    if not isinstance(location, str):
        raise ConfigError(f"The {what} must be a folder or a URI (a string). Got {location!r}.")
    if not location.strip():
        raise ConfigError(f"The {what} is empty; give a folder or a URI such as s3://BUCKET/PREFIX.")
    if "://" not in location:
        return location  # a local path: the operating system resolves it
    scheme, _, rest = location.partition("://")

    def refuse(why: str) -> ConfigError:
        return ConfigError(f"The {what} {location!r} is not a results location: {why}.")

    if not _SCHEME.fullmatch(scheme):
        raise refuse("what precedes '://' is not a URI scheme; give a local folder or s3://BUCKET/PREFIX")
    if scheme != scheme.lower() and scheme.lower() in (*OBJECT_SCHEMES, "file"):
        raise refuse(f"write the scheme in lower case ({scheme.lower()}://{rest})")
    if scheme == "file":
        return _file_path(rest, refuse)
    if scheme not in OBJECT_SCHEMES:
        known = ", ".join(f"{s}://" for s in OBJECT_SCHEMES)
        same = _LOOKALIKES.get(scheme.lower())
        hint = f" (the same store is written {same}://{rest})" if same else ""
        raise refuse(f"unknown scheme {scheme + '://'!r}; a local folder, file://, {known} are known{hint}")
    if "?" in rest or "#" in rest:
        raise refuse(
            "a query or fragment is not read (the endpoint and credentials come from the AWS_* variables); "
            "drop what follows '?' or '#'"
        )
    rest = rest.rstrip("/")
    bucket, _, key = rest.partition("/")
    if not bucket:
        raise refuse(f"no bucket; write {scheme}://BUCKET/PREFIX")
    segments = key.split("/") if key else []
    if "" in segments:
        raise refuse("an empty segment ('//') in the key; an object store keeps it, a folder would not")
    dotted = next((s for s in segments if s in (".", "..")), None)
    if dotted is not None:
        resolved = _resolve(segments)
        fix = f"{scheme}://{bucket}" + (f"/{resolved}" if resolved else "")
        raise refuse(
            f"a {dotted!r} segment in the key: an object store's key is a name, not a path (rows would be "
            f"written to one key and looked for under another); write {fix}"
        )
    return f"{scheme}://{bucket}" + (f"/{key}" if key else "")


def is_local(location: str) -> bool:
    """Whether a normalised location is a path on this machine's file system."""
    return "://" not in location


def _file_path(rest: str, refuse) -> str:
    """The path of ``file://HOST/PATH``: HOST empty or ``localhost``."""
    host, slash, path = rest.partition("/")
    if not slash or host not in ("", "localhost"):
        raise refuse("a file:// URI names an absolute path on this machine: file:///PATH")
    if "?" in path or "#" in path:
        raise refuse("a query or fragment is not read; drop what follows '?' or '#'")
    return "/" + unquote(path)


def _resolve(segments: list[str]) -> str:
    """The key pyarrow would write to (``.`` dropped, ``..`` taking the segment before)."""
    kept: list[str] = []
    for segment in segments:
        if segment == "..":
            if kept:
                kept.pop()
        elif segment != ".":
            kept.append(segment)
    return "/".join(kept)
