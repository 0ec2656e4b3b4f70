"""S3 through boto3: ``s3://bucket/prefix`` URLs, a client from the standard credential chain, and
the few object calls deepgrid needs, each failure a user can cause turned into one deepgrid line.

Credentials come only from boto3's own chain (environment, shared profile, instance role), never
from a Conf. The endpoint too: boto3 honours ``AWS_ENDPOINT_URL`` / ``AWS_ENDPOINT_URL_S3``, which
is how the tests point it at moto on loopback. boto3 is imported on first use, so ``import
deepgrid`` and every local path work without the ``aws`` extra.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path, PurePath
from typing import Any

from deepgrid.errors import ClusterError, ConfigError, DataError

# s3://bucket[/key]. One slash is accepted too: Path("s3://b/p") folds the double slash, and
# callers above this layer hand locations around as Path objects.
_URL = re.compile(r"s3:/{1,2}([^/]*)(?:/(.*))?")
# S3's bucket naming rules (the common subset): 3-63 lowercase letters, digits, dots and hyphens.
_BUCKET = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")
_BAD_CREDENTIALS = ("InvalidAccessKeyId", "SignatureDoesNotMatch", "InvalidClientTokenId",
                    "ExpiredToken", "InvalidToken", "AuthFailure")


@dataclass(frozen=True)
class S3Url:
    """A bucket and a key (or key prefix) without leading or trailing slashes."""

    bucket: str
    key: str = ""

    def __str__(self) -> str:
        return f"s3://{self.bucket}/{self.key}" if self.key else f"s3://{self.bucket}"

    def child(self, name: str) -> S3Url:
        """The URL of ``name`` under this prefix."""
        return S3Url(self.bucket, f"{self.key}/{name}" if self.key else name)

    @property
    def prefix(self) -> str:
        """The key prefix that lists what lies under this URL (ends with "/" unless empty)."""
        return f"{self.key}/" if self.key else ""

    @property
    def name(self) -> str:
        return self.key.rpartition("/")[2]


def is_s3(location: str | os.PathLike[str] | None) -> bool:
    """Whether ``location`` names S3 (``s3://...``, or a Path that folded its slashes)."""
    if location is None:
        return False
    text = str(location)
    return text.startswith("s3://") or (isinstance(location, PurePath) and text.startswith("s3:/"))


def parse_s3_url(location: str | os.PathLike[str], field: str = "location") -> S3Url:
    """``s3://bucket/prefix`` as an :class:`S3Url`; a ConfigError naming ``field`` otherwise."""
    match = _URL.fullmatch(str(location))
    bucket = match[1] if match else ""
    if match is None or not _BUCKET.fullmatch(bucket) or ".." in bucket:
        raise ConfigError(f"{field} {str(location)!r} is not an S3 location; expected s3://BUCKET/PREFIX with a "
                          "bucket name of 3 to 63 lowercase letters, digits, dots or hyphens.")
    key = "/".join(part for part in (match[2] or "").split("/") if part)
    return S3Url(bucket, key)


@dataclass(frozen=True)
class S3Object:
    """One listed object: its full key, size in bytes and ETag (quotes stripped)."""

    key: str
    size: int
    etag: str


def _boto3() -> Any:
    try:
        import boto3
    except ImportError:
        raise ConfigError("s3:// locations need boto3, which is not installed; install deepgrid[aws] "
                          "(pip install 'deepgrid[aws]').") from None
    return boto3


def check_region(region: str | None) -> None:
    """A region that no partition of botocore's endpoint data knows is a typo: say so before any call
    (with an endpoint override boto3 would sign for it silently, and AWS answers with a redirect)."""
    if not region:
        return
    session = _boto3().session.Session()
    known = {r for partition in session.get_available_partitions()
             for r in session.get_available_regions("s3", partition_name=partition)}
    if known and region not in known:
        import difflib

        close = difflib.get_close_matches(region, sorted(known), n=1, cutoff=0.6)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise ConfigError(f"AWS region {region!r} is not a known S3 region.{hint} Set AWS_REGION or "
                          "AWS_DEFAULT_REGION (or the profile's region) to one such as 'us-east-1'.")


def s3_client() -> Any:
    """A boto3 S3 client from the standard chain; one line when the region or credentials are missing."""
    boto3 = _boto3()
    session = boto3.session.Session()
    check_region(session.region_name)
    if session.get_credentials() is None:
        raise ClusterError("No AWS credentials found for S3; set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, "
                           "AWS_PROFILE, or run on a host with an instance role.")
    return session.client("s3")


@contextmanager
def s3_errors(action: str, url: S3Url) -> Iterator[None]:
    """Turn botocore's failures while ``action`` (e.g. "upload to") on ``url`` into one deepgrid line."""
    from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError

    try:
        yield
    except NoCredentialsError:
        raise ClusterError(f"No AWS credentials found to {action} {url}; set AWS_ACCESS_KEY_ID and "
                           "AWS_SECRET_ACCESS_KEY, AWS_PROFILE, or use an instance role.") from None
    except ClientError as e:
        error = e.response.get("Error", {})
        code = str(error.get("Code", ""))
        if code in _BAD_CREDENTIALS:
            raise ClusterError(f"AWS rejected the credentials ({code}) trying to {action} {url}; check "
                               "AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY or the profile.") from None
        if code == "NoSuchBucket":
            raise ClusterError(f"S3 bucket {url.bucket!r} does not exist (trying to {action} {url}); create it "
                               "or fix the bucket name.") from None
        if code in ("AccessDenied", "403", "AllAccessDisabled"):
            raise ClusterError(f"AWS denied access trying to {action} {url}; the credentials in use lack the "
                               "S3 permission for it.") from None
        if code in ("NoSuchKey", "404", "NotFound"):
            raise DataError(f"{url}: no such object in S3 (trying to {action} it).") from None
        raise ClusterError(f"S3 failed to {action} {url}: {code or 'error'}: "
                           f"{error.get('Message') or e}".rstrip()) from None
    except BotoCoreError as e:  # endpoint unreachable, bad region, ...: no response to read
        raise ClusterError(f"S3 failed to {action} {url}: {e}") from None


class S3Store:
    """The object calls deepgrid makes, through one client."""

    def __init__(self, client: Any = None) -> None:
        self.client = client if client is not None else s3_client()

    def list(self, url: S3Url) -> list[S3Object]:
        """Every object under ``url``'s prefix (recursive), in key order."""
        found: list[S3Object] = []
        with s3_errors("list", url):
            pages = self.client.get_paginator("list_objects_v2").paginate(Bucket=url.bucket, Prefix=url.prefix)
            for page in pages:
                for item in page.get("Contents", []):
                    found.append(S3Object(item["Key"], int(item["Size"]), str(item.get("ETag", "")).strip('"')))
        return found

    def upload(self, path: Path, url: S3Url) -> None:
        with s3_errors("upload to", url):
            self.client.upload_file(str(path), url.bucket, url.key)

    def put_bytes(self, data: bytes, url: S3Url) -> None:
        with s3_errors("write", url):
            self.client.put_object(Bucket=url.bucket, Key=url.key, Body=data)

    def get_bytes(self, url: S3Url) -> bytes:
        with s3_errors("read", url):
            return bytes(self.client.get_object(Bucket=url.bucket, Key=url.key)["Body"].read())

    def download(self, url: S3Url, path: Path) -> None:
        """Into ``path`` as it is (callers download to a temporary name and rename)."""
        with s3_errors("download", url):
            self.client.download_file(url.bucket, url.key, str(path))

    def delete(self, bucket: str, keys: list[str]) -> None:
        """Delete ``keys`` in the order given (a checkpoint's manifest first), 1000 a call."""
        for start in range(0, len(keys), 1000):
            chunk = keys[start:start + 1000]
            with s3_errors("delete from", S3Url(bucket, chunk[0])):
                reply = self.client.delete_objects(Bucket=bucket, Delete={"Objects": [{"Key": k} for k in chunk],
                                                                          "Quiet": True})
            failed = reply.get("Errors") or []
            if failed:
                first = failed[0]
                raise ClusterError(f"S3 could not delete s3://{bucket}/{first.get('Key')}: "
                                   f"{first.get('Code')}: {first.get('Message')}")
