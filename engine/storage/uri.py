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
A bucket that is not a bucket's name (``s3://host:9000/x``, ``s3://user@b/x``) and a control
character (a pasted newline) are refused too, and so is a key character that pyarrow's URIs
(``pandas.read_parquet("s3://…")``) read otherwise or not at all: ``%``, a space, non-ASCII.  A store's scheme with one slash or none
(``s3:/b/x``, ``file:x``) is refused rather than taken for a local folder named ``s3:``;
``file:/PATH`` is the path.  Trailing slashes are dropped: ``s3://b/x/`` is ``s3://b/x``.
"""

from __future__ import annotations

import os
import re
from urllib.parse import unquote

from engine.errors import ConfigError

# The object stores pyarrow reaches, by scheme; ``file`` is a local path.
OBJECT_SCHEMES = ("s3", "gs")
_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*")
_LOOKALIKES = {"s3a": "s3", "s3n": "s3", "gcs": "gs"}  # other tools' names for the same stores
# Schemes of other stores (fsspec's and Hadoop's names): written with one slash or none
# (``s3:/b/x``), a location would otherwise be a local folder named ``s3:`` in the working
# directory, and a run would write there without a word.  One letter is a Windows drive.
_OTHER_SCHEMES = ("az", "abfs", "abfss", "adl", "wasb", "wasbs", "hdfs", "webhdfs", "http", "https", "ftp", "sftp")
_SCHEME_PREFIX = re.compile(r"([A-Za-z][A-Za-z0-9+.-]+):(.*)", re.DOTALL)
# A bucket's name: S3's rules allow lower-case letters, digits, '.' and '-' (older buckets
# also upper case and '_'); a ':' or '@' is an endpoint or credentials written into the URI.
_BUCKET = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
# What a URI's path carries as written (RFC 3986's pchar, less '%'): pyarrow's URIs, and so
# pandas.read_parquet("s3://…"), decode '%20' to a space and cannot parse a space, 'é' or
# '[', while the rows are written under the key as given: readers would look elsewhere.
_KEY_CHAR = re.compile(r"[A-Za-z0-9._~!$&'()*+,;=:@/-]")


def normalise(location: str, what: str = "--out") -> str:
    """``location`` in its one normal form: a local path as given (``file://`` URIs become
    their path), or ``SCHEME://BUCKET[/KEY]`` with no trailing slash.  A ConfigError (one
    line naming ``what`` and the fix) for anything else."""
    if isinstance(location, os.PathLike):  # a pathlib.Path in the Python API: a local path
        location = os.fspath(location)
    if not isinstance(location, str):
        raise ConfigError(f"The {what} must be a folder or a URI (a string). Got {location!r}.")
    if not location.strip():
        raise ConfigError(f"The {what} is empty; give a folder or a URI such as s3://BUCKET/PREFIX.")

    def refuse(why: str) -> ConfigError:
        return ConfigError(f"The {what} {location!r} is not a results location: {why}.")

    if "://" not in location:
        return _local_path(location, refuse)
    scheme, _, rest = location.partition("://")

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
    if any(ord(c) < 32 or ord(c) == 127 for c in rest):
        raise refuse("a control character (a newline, a tab) in the URI; an object store would keep it in the key")
    return _object_uri(scheme, rest.rstrip("/"), refuse)


def _object_uri(scheme: str, rest: str, refuse) -> str:
    """``SCHEME://BUCKET[/KEY]`` from what follows ``scheme://`` (no trailing slash), or ``refuse``'s
    ConfigError for a missing or odd bucket and for a key readers would not find."""
    bucket, _, key = rest.partition("/")
    if not bucket:
        raise refuse(f"no bucket; write {scheme}://BUCKET/PREFIX")
    if not _BUCKET.fullmatch(bucket):
        where = (
            " (the endpoint comes from AWS_ENDPOINT_URL_S3, the credentials from the AWS_* variables, never from the URI)"
            if ":" in bucket or "@" in bucket
            else ""
        )
        raise refuse(f"{bucket!r} is not a bucket name: letters, digits, '.', '-' and '_'{where}")
    odd = next((c for c in key if not _KEY_CHAR.fullmatch(c)), None)
    if odd is not None:
        raise refuse(
            f"{odd!r} in the key: pyarrow's URIs, and so pandas.read_parquet, read '%XX' as an escape and cannot "
            "parse a space or a character outside ASCII's letters, digits and -._~!$&'()*+,;=:@, so readers "
            "would not find the rows; use those"
        )
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


def _local_path(location: str, refuse) -> str:
    """A location without ``://``: a local path as given (the operating system resolves it),
    ``file:/PATH`` (a file URI without an authority) as its path; a store's scheme followed by
    ``:`` and fewer than two slashes is refused, never taken for a folder named ``s3:``."""
    match = _SCHEME_PREFIX.fullmatch(location)
    if match is None:
        return location
    scheme, rest = match[1], match[2]
    if scheme == "file" and rest.startswith("/"):
        return _file_path(rest, refuse)  # file:/PATH, RFC 8089's form without an authority
    known = (*OBJECT_SCHEMES, "file", *_LOOKALIKES, *_OTHER_SCHEMES)
    if scheme.lower() not in known:
        return location
    store = _LOOKALIKES.get(scheme.lower(), scheme.lower())
    if store in _OTHER_SCHEMES:
        meant = "a local folder, file:///PATH, " + ", ".join(f"{s}://BUCKET/PREFIX" for s in OBJECT_SCHEMES)
    else:
        meant = "file:///PATH" if store == "file" else f"{store}://{rest.lstrip('/')}"
    raise refuse(
        f"{scheme + ':'!r} without '//' would be a local folder named {scheme + ':'!r}; write {meant} "
        f"(or ./{location} for such a local folder)"
    )


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
