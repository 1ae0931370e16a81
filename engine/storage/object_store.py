"""Object stores: one explicit filesystem per bucket, built by the driver and handed to every trial.

A driver's environment does not reach Ray workers on other nodes, so a trial must never
build its filesystem from its own environment: the driver calls ``object_store(out)`` once,
resolving its credentials as boto does (the AWS_* variables, then the profile files, then
the instance metadata), passes the object (it pickles with its endpoint and the resolved
keys) to every Tune trial, Ray Train worker and Ray's own storage, and the trial process
calls ``adopt_filesystem``.  ``object_store_reason`` turns an object store's error into a
cause a user can act on.

Faults of the store itself are bounded (docs/guarantees.md, "The store's own faults"): each
request has a connect and an answer timeout (``WARMSTART_S3_TIMEOUT``) and is retried with
exponential backoff (``WARMSTART_S3_RETRIES``), so a short outage passes unnoticed and a
silent endpoint fails in a stated time; the first contact of a command (``reach``) retries
once only, so a wrong endpoint is answered in seconds, not minutes.
"""

from __future__ import annotations

import os
import threading

import pyarrow.fs as pafs

from engine.errors import ConfigError, StoreUnavailable

_OBJECT_STORES: dict[str, pafs.FileSystem] = {}  # "s3://bucket" -> its filesystem in this process

# A request that gets no answer for TIMEOUT seconds is given up (and retried); connecting
# waits at most min(5, TIMEOUT).  RETRIES retries follow with backoff 25 ms, 50 ms, ... (the
# AWS SDK's default strategy: 25 ms · (2^RETRIES - 1) in all, 51 s for the default 11).
TIMEOUT, RETRIES = 10.0, 11
FIRST_CONTACT_RETRIES = 1  # reach(): a command's first request, so a wrong endpoint is named in seconds


def settings() -> tuple[float, int]:
    """(timeout, retries) from WARMSTART_S3_TIMEOUT and WARMSTART_S3_RETRIES, else the defaults."""
    values = []
    for name, default, kind in (("WARMSTART_S3_TIMEOUT", TIMEOUT, float), ("WARMSTART_S3_RETRIES", RETRIES, int)):
        raw = os.environ.get(name, "")
        try:
            value = kind(raw) if raw else default
        except ValueError:
            value = -1
        if not value >= (0.1 if kind is float else 0):
            raise ConfigError(
                f"{name} must be a {'number of seconds >= 0.1' if kind is float else 'count >= 0'}. Got {raw!r}."
            )
        values.append(value)
    return values[0], values[1]


def bounds() -> tuple[float, float]:
    """The longest a silent store can hold (first contact, any later request), in seconds."""
    timeout, retries = settings()
    attempt = min(5.0, timeout) + timeout
    return 2 * attempt + 0.025, (retries + 1) * attempt + 0.025 * (2**retries - 1)


def _bucket_root(uri: str) -> str:
    scheme, _, rest = uri.partition("://")
    return f"{scheme}://{rest.split('/', 1)[0]}"


def object_store(out: str) -> pafs.FileSystem | None:
    """The filesystem of an object-store URI (None for a local path), built once per bucket
    from this process's credentials, resolved as boto resolves them: the AWS_* variables
    (``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``, ``AWS_SESSION_TOKEN``), then the
    profile (``AWS_PROFILE`` in ``~/.aws/credentials`` and ``~/.aws/config``, or
    ``AWS_SHARED_CREDENTIALS_FILE`` and ``AWS_CONFIG_FILE``: keys, a role to assume, SSO,
    a credential process), then a container's or an instance's metadata; the endpoint from
    ``AWS_ENDPOINT_URL_S3`` or ``AWS_ENDPOINT_URL`` (or the profile's ``endpoint_url``), the
    region from ``AWS_REGION``, ``AWS_DEFAULT_REGION`` or the profile.

    The driver calls this and hands the object (it pickles with its endpoint and the
    resolved keys, temporary ones with their session token) to every trial and to Ray Tune
    and Ray Train, because a driver's environment does not reach Ray workers on other
    nodes; a trial process then calls ``adopt_filesystem`` and never resolves its own."""
    if "://" not in out:
        return None
    root = _bucket_root(out)
    if root not in _OBJECT_STORES:
        scheme = root.split("://")[0].lower()
        if scheme in ("gs", "gcs"):
            raise ConfigError(
                f"{out}: Google Cloud Storage (gs://) is not supported yet (untested: a worker would use its own "
                "credentials, and without a network pyarrow's GCS client waits for minutes); use its S3-compatible "
                "endpoint instead (--out s3://BUCKET/PREFIX with AWS_ENDPOINT_URL_S3=https://storage.googleapis.com "
                "and an HMAC key as AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY), or a shared file system."
            )
        if scheme == "s3":
            _OBJECT_STORES[root] = _s3(_s3_options(root.removeprefix("s3://")), settings()[1])
        else:
            _OBJECT_STORES[root] = pafs.FileSystem.from_uri(out)[0]
    return _OBJECT_STORES[root]


def adopt_filesystem(out: str, fs: pafs.FileSystem | None) -> None:
    """Use ``fs`` (the driver's ``object_store(out)``) for ``out`` in this process."""
    if fs is not None and "://" in out:
        _OBJECT_STORES[_bucket_root(out)] = fs


def reach(out: str) -> None:
    """A command's first request to the store of ``out``, retried once only: an endpoint that
    refuses or does not answer raises its OSError within ``bounds()[0]`` seconds instead of
    after every retry.  Other errors (a missing bucket, refused keys) are left to the request
    that follows, which names them.  The request runs in a helper thread, so that Ctrl-C
    interrupts the wait at once."""
    if "://" not in out:
        return
    fs = object_store(out)  # resolves the credentials (or adopted from the driver), or refuses the scheme
    if not isinstance(fs, RetryingS3FileSystem):
        return
    quick = RetryingS3FileSystem(FIRST_CONTACT_RETRIES, **fs.__reduce__()[1][1])  # the same store, retried once
    failure: list[OSError] = []
    answered = threading.Event()

    def head() -> None:
        try:
            quick.get_file_info(_bucket_root(out).split("://")[1])
        except OSError as exc:
            failure.append(exc)
        finally:
            answered.set()

    # A daemon thread: a Ctrl-C ends the wait here; the request itself ends within its timeouts.
    # (An Event, not Thread.join: a join that a Ctrl-C interrupts may mark the thread stopped.)
    _IN_FLIGHT[:] = [*(event for event in _IN_FLIGHT if not event.is_set()), answered]
    threading.Thread(target=head, daemon=True).start()
    while not answered.wait(0.1):
        pass
    if failure and unreachable(failure[0]):
        raise failure[0]


_IN_FLIGHT: list[threading.Event] = []  # reach()'s requests, set when answered


def request_in_flight() -> bool:
    """Whether a first-contact request is still waiting for the store (after a Ctrl-C): pyarrow
    would wait for it when it finalises S3 at exit, so the CLI exits at once instead."""
    return not all(answered.is_set() for answered in _IN_FLIGHT)


def _s3(options: dict, retries: int) -> pafs.S3FileSystem:
    timeout, _ = settings()
    # Delayed open: a small object (a row, a status, a manifest) goes up as one PutObject
    # when its stream closes, so it appears whole or not at all.
    return RetryingS3FileSystem(
        retries, **options, allow_delayed_open=True, connect_timeout=min(5.0, timeout), request_timeout=timeout
    )


class RetryingS3FileSystem(pafs.S3FileSystem):
    """pyarrow's S3FileSystem with the AWS SDK's default retry strategy (``retries`` retries,
    backoff 25 ms doubling), which also survives pickling: pyarrow's own pickle leaves the
    retry strategy out, so a trial elsewhere would get the SDK's three attempts instead."""

    def __init__(self, retries: int, **options) -> None:
        # max_attempts is the number of retries, in fact (aws-sdk-cpp's DefaultRetryStrategy).
        super().__init__(**options, retry_strategy=pafs.AwsDefaultS3RetryStrategy(max_attempts=retries))
        self.retries = retries

    def __reduce__(self):
        return _rebuild_s3, (self.retries, super().__reduce__()[1][0])


def _rebuild_s3(retries: int, options: dict) -> RetryingS3FileSystem:
    return RetryingS3FileSystem(retries, **options)


def _s3_options(bucket: str) -> dict:
    env = os.environ
    session = _boto_session(bucket)
    profile = _profile_config(session)
    endpoint = env.get("AWS_ENDPOINT_URL_S3") or env.get("AWS_ENDPOINT_URL") or profile.get("endpoint_url")
    region = env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION") or profile.get("region")
    options: dict = {}
    if endpoint:
        if "://" not in endpoint:
            raise ConfigError(
                f"Cannot use s3://{bucket}: the endpoint {endpoint!r} has no scheme; "
                f"write it as http://{endpoint} or https://{endpoint}."
            )
        scheme, _, host = endpoint.partition("://")
        options.update(endpoint_override=host.rstrip("/"), scheme=scheme)
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
    credentials = _credentials(session, bucket) if session is not None else None
    if credentials is not None:
        options.update(access_key=credentials.access_key, secret_key=credentials.secret_key)
        if credentials.token:
            options["session_token"] = credentials.token
    elif key:  # botocore absent: the variables are all there is to hand on
        options.update(access_key=key, secret_key=secret, session_token=env.get("AWS_SESSION_TOKEN") or None)
    else:
        options["anonymous"] = True  # nothing resolved: unsigned requests, never a worker's own keys
    return {**options, "region": region}


def _boto_session(bucket: str):
    """botocore's session (it reads AWS_PROFILE and the profile files), or None without botocore
    when the AWS_* keys are set; without botocore and without keys, a one-line refusal."""
    try:
        import botocore.session
    except ImportError:
        if os.environ.get("AWS_ACCESS_KEY_ID"):
            return None
        raise ConfigError(
            f"Cannot use s3://{bucket}: resolving credentials from a profile or the instance metadata needs "
            "botocore (pip install botocore), or set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY."
        ) from None
    return botocore.session.Session()


def _profile_config(session) -> dict:
    if session is None:
        return {}
    import botocore.exceptions

    try:
        return dict(session.get_scoped_config())
    except botocore.exceptions.ProfileNotFound as exc:
        raise ConfigError(f"Cannot use the AWS profile: {exc}.") from None


def _credentials(session, bucket: str):
    """The driver's credentials, frozen (keys, and a session token when they are temporary)."""
    import botocore.exceptions

    try:
        found = session.get_credentials()
        return found.get_frozen_credentials() if found is not None else None
    except botocore.exceptions.BotoCoreError as exc:  # a profile that cannot be read, a role that cannot be assumed
        raise ConfigError(f"Cannot use s3://{bucket}: the AWS credentials cannot be resolved: {exc}.") from None


# Errors the AWS SDK retries: the endpoint does not answer or is overloaded.
_TRANSIENT = ("NETWORK_CONNECTION", "SERVICE_UNAVAILABLE", "SLOW_DOWN", "INTERNAL_FAILURE", "REQUEST_TIMEOUT")


def unreachable(exc: BaseException | str) -> bool:
    """Whether an error says the store did not answer (connection refused, reset or timed out)."""
    text = str(exc)
    return any(f"AWS Error {code}" in text for code in _TRANSIENT) or "HTTP status 5" in text or "curlCode" in text


def store_failure(text: str) -> bool:
    """Whether a failed trial's error is the object store's: it did not answer, or it
    refused the credentials (expired, say) - a ``--resume`` later is the remedy, not a fix."""
    return unreachable(text) or "AWS Error" in text


# Causes of object-store errors, by the AWS error code pyarrow quotes.
_S3_CAUSES = {
    "NO_SUCH_BUCKET": "the bucket {bucket!r} does not exist",
    "INVALID_ACCESS_KEY_ID": "the credentials are not valid (AWS_ACCESS_KEY_ID is unknown there)",
    "SIGNATURE_DOES_NOT_MATCH": "the credentials are not valid (AWS_SECRET_ACCESS_KEY does not match the key id)",
    "EXPIRED_TOKEN": "the credentials have expired (AWS_SESSION_TOKEN); renew them and resume",
    "ACCESS_DENIED": "access denied: these credentials may not write there",
    "NETWORK_CONNECTION": "the endpoint {endpoint} does not answer",
}


def endpoint_name() -> str:
    return os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL") or "of S3"


def object_store_reason(exc: OSError | str, uri: str) -> str:
    """An object store's error as a cause a user can act on."""
    text = str(exc)
    endpoint = endpoint_name()
    for code, cause in _S3_CAUSES.items():
        if f"AWS Error {code}" in text:
            if code == "NETWORK_CONNECTION" and ("curlCode: 28" in text or "Timeout was reached" in text):
                return f"the endpoint {endpoint} does not answer (no reply within {settings()[0]:g}s, WARMSTART_S3_TIMEOUT)"
            return cause.format(bucket=_bucket_root(uri).split("://")[1], endpoint=endpoint)
    if "No response body" in text or "HTTP status " in text:
        # An address that answers HTTP but not as S3 (a proxy's or another service's empty
        # 404 or 500): pyarrow has no S3 error code to quote.
        status = text.split("HTTP status ", 1)[1].split()[0].rstrip(",.") if "HTTP status " in text else "404"
        return f"the endpoint {endpoint} answers, but not as an S3 server (HTTP {status} without an S3 error)"
    if isinstance(exc, str):
        return text.splitlines()[0] if text else "unknown error"
    return exc.strerror or (text.splitlines()[0] if text else type(exc).__name__)


def outage(error: BaseException | str, out: str) -> StoreUnavailable:
    """A run's store failure past the timeouts and retries, as one line naming the store and the cause."""
    what = "stopped answering" if unreachable(error) else "refused a request"
    return StoreUnavailable(
        f"The object store {endpoint_name()} {what} while the run wrote {out} "
        f"({object_store_reason(error, out)}); completed rounds are saved"
    )
