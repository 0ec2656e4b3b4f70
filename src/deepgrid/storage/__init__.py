"""Where files live: local paths and ``s3://bucket/prefix`` (issue 12).

``s3`` parses S3 URLs, makes a client from boto3's standard credential chain (boto3 imported on
first use: without the ``aws`` extra an ``s3://`` location is one line saying to install it) and
wraps the object calls so that missing or rejected credentials, a bucket that does not exist and a
region typo are each one deepgrid line. ``cache`` keeps local copies of objects keyed by bucket,
key and ETag and builds the local directory a reader of data files needs. Run checkpoints on S3
(manifest last, pruning, resume) are deepgrid.checkpoint.remote, a layer above.
"""

import os

from deepgrid.storage.cache import cache_root, fetch_object, is_cached, local_view, object_path
from deepgrid.storage.s3 import (
    S3Object,
    S3Store,
    S3Url,
    check_region,
    is_s3,
    parse_s3_url,
    s3_client,
    s3_errors,
)

__all__ = [
    "S3Object",
    "S3Store",
    "S3Url",
    "cache_root",
    "check_region",
    "fetch_object",
    "is_cached",
    "is_s3",
    "local_dir",
    "local_view",
    "object_path",
    "parse_s3_url",
    "s3_client",
    "s3_errors",
]


def local_dir(location: str | os.PathLike[str], field: str = "data_dir") -> str:
    """``location`` itself, or for ``s3://...`` the local cache directory that mirrors it."""
    if not is_s3(location):
        return os.fspath(location)
    return str(local_view(parse_s3_url(location, field)))
