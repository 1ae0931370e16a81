"""Object stores: one explicit filesystem per bucket, built by the driver and handed to every trial.

A driver's environment does not reach Ray workers on other nodes, so a trial must never
build its filesystem from its own environment: the driver calls ``object_store(out)`` once
(from the standard AWS variables for ``s3://``), passes the object (it pickles with its
endpoint and credentials) to every Tune trial, Ray Train worker and Ray's own storage, and
the trial process calls ``adopt_filesystem``.  ``object_store_reason`` turns an object
store's error into a cause a user can act on.
"""

from __future__ import annotations

import os

import pyarrow.fs as pafs

from engine.errors import ConfigError

_OBJECT_STORES: dict[str, pafs.FileSystem] = {}  # "s3://bucket" -> its filesystem in this process


def _bucket_root(uri: str) -> str:
    scheme, _, rest = uri.partition("://")
    return f"{scheme}://{rest.split('/', 1)[0]}"


def object_store(out: str) -> pafs.FileSystem | None:
    """The filesystem of an object-store URI (None for a local path), built once per bucket
    from this process's environment: the standard AWS variables for ``s3://``
    (``AWS_ENDPOINT_URL_S3`` or ``AWS_ENDPOINT_URL``, ``AWS_ACCESS_KEY_ID``,
    ``AWS_SECRET_ACCESS_KEY``, ``AWS_SESSION_TOKEN``, ``AWS_REGION`` or ``AWS_DEFAULT_REGION``).

    The driver calls this and hands the object (it pickles with its endpoint and
    credentials) to every trial and to Ray Tune and Ray Train, because a driver's
    environment does not reach Ray workers on other nodes; a trial process then calls
    ``adopt_filesystem`` and never reads its own environment for it."""
    if "://" not in out:
        return None
    root = _bucket_root(out)
    if root not in _OBJECT_STORES:
        if root.startswith("s3://"):
            _OBJECT_STORES[root] = _s3_from_environment(root.removeprefix("s3://"))
        else:
            _OBJECT_STORES[root] = pafs.FileSystem.from_uri(out)[0]
    return _OBJECT_STORES[root]


def adopt_filesystem(out: str, fs: pafs.FileSystem | None) -> None:
    """Use ``fs`` (the driver's ``object_store(out)``) for ``out`` in this process."""
    if fs is not None and "://" in out:
        _OBJECT_STORES[_bucket_root(out)] = fs


def _s3_from_environment(bucket: str) -> pafs.S3FileSystem:
    env = os.environ
    endpoint = env.get("AWS_ENDPOINT_URL_S3") or env.get("AWS_ENDPOINT_URL")
    region = env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION")
    options: dict = {}
    if endpoint:
        scheme, sep, host = endpoint.partition("://")
        options.update(endpoint_override=host.rstrip("/") if sep else endpoint, scheme=scheme if sep else "https")
        region = region or "us-east-1"
    elif region is None:
        try:
            region = pafs.resolve_s3_region(bucket)
        except OSError as exc:
            raise ConfigError(f"Cannot use s3://{bucket}: {object_store_reason(exc, 's3://' + bucket)}.") from None
    key, secret = env.get("AWS_ACCESS_KEY_ID"), env.get("AWS_SECRET_ACCESS_KEY")
    if bool(key) != bool(secret):
        raise ConfigError(
            f"Cannot use s3://{bucket}: AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY must be set together."
        )
    # Delayed open: a small object (a row, a status, a manifest) goes up as one PutObject
    # when its stream closes, so it appears whole or not at all; short timeouts make an
    # endpoint that does not answer fail in seconds.
    return pafs.S3FileSystem(
        access_key=key or None,
        secret_key=secret or None,
        session_token=env.get("AWS_SESSION_TOKEN") or None,
        region=region,
        allow_delayed_open=True,
        connect_timeout=5,
        request_timeout=60,
        **options,
    )


# Causes of object-store errors, by the AWS error code pyarrow quotes.
_S3_CAUSES = {
    "NO_SUCH_BUCKET": "the bucket {bucket!r} does not exist",
    "INVALID_ACCESS_KEY_ID": "the credentials are not valid (AWS_ACCESS_KEY_ID is unknown there)",
    "SIGNATURE_DOES_NOT_MATCH": "the credentials are not valid (AWS_SECRET_ACCESS_KEY does not match the key id)",
    "EXPIRED_TOKEN": "the credentials have expired (AWS_SESSION_TOKEN)",
    "ACCESS_DENIED": "access denied: these credentials may not write there",
    "NETWORK_CONNECTION": "the endpoint {endpoint} does not answer",
}


def object_store_reason(exc: OSError, uri: str) -> str:
    """An object store's error as a cause a user can act on."""
    text = str(exc)
    endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL") or "of S3"
    for code, cause in _S3_CAUSES.items():
        if f"AWS Error {code}" in text:
            return cause.format(bucket=_bucket_root(uri).split("://")[1], endpoint=endpoint)
    return exc.strerror or (text.splitlines()[0] if text else type(exc).__name__)
