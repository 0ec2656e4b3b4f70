"""boto3, imported on first use, and AWS's errors as one line each.

Credentials come only from boto3's standard chain (environment, shared profile, instance role),
never from a Conf. ``AWS_ENDPOINT_URL`` (boto3's own setting) points every client elsewhere, which
is how the tests talk to a moto server on loopback.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from deepgrid.errors import ClusterError, ConfigError

# Error codes that mean the credentials themselves were refused (the service differs in wording).
_BAD_CREDENTIALS = {"AuthFailure", "InvalidClientTokenId", "UnrecognizedClientException", "SignatureDoesNotMatch",
                    "ExpiredToken", "ExpiredTokenException", "RequestExpired", "InvalidAccessKeyId"}
_DENIED = {"UnauthorizedOperation", "AccessDenied", "AccessDeniedException"}
HOW_TO_GIVE_CREDENTIALS = ("set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or AWS_PROFILE, or run `aws configure` "
                           "(deepgrid reads no keys from a Conf)")


class Aws:
    """One region's clients, made on first use from one boto3 session."""

    def __init__(self, region: str) -> None:
        try:
            import boto3
        except ImportError:
            raise ClusterError("deepgrid cluster needs boto3: pip install 'deepgrid[aws]'.") from None
        self.region = region
        self.session = boto3.session.Session(region_name=region)
        self._clients: dict[str, Any] = {}

    def client(self, service: str) -> Any:
        if service not in self._clients:
            self._clients[service] = self.session.client(service)
        return self._clients[service]

    @property
    def ec2(self) -> Any:
        return self.client("ec2")

    @property
    def iam(self) -> Any:
        return self.client("iam")

    @property
    def ssm(self) -> Any:
        return self.client("ssm")

    def require_credentials(self) -> str:
        """Where the credentials come from (env, shared-credentials-file, iam-role, ...), or one line."""
        credentials = self.session.get_credentials()
        if credentials is None:
            raise ConfigError(f"No AWS credentials found: {HOW_TO_GIVE_CREDENTIALS}.")
        return str(getattr(credentials, "method", "the standard chain"))


def error_code(error: Exception) -> str:
    response = getattr(error, "response", None) or {}
    return str(response.get("Error", {}).get("Code", ""))


def error_message(error: Exception) -> str:
    response = getattr(error, "response", None) or {}
    return str(response.get("Error", {}).get("Message", "")) or str(error)


@contextmanager
def aws_errors(action: str) -> Iterator[None]:
    """Turn what boto3 raises while doing ``action`` into one deepgrid line (exit 2 at the CLI)."""
    import botocore.exceptions as bx

    try:
        yield
    except (bx.NoCredentialsError, bx.PartialCredentialsError) as e:
        raise ConfigError(f"No usable AWS credentials to {action} ({e}): {HOW_TO_GIVE_CREDENTIALS}.") from None
    except bx.ProfileNotFound as e:
        raise ConfigError(f"{e}; set AWS_PROFILE to a profile in ~/.aws/config, or unset it.") from None
    except bx.WaiterError as e:
        raise ClusterError(f"Gave up waiting to {action}: {e}. Run the command again to go on.") from None
    except bx.EndpointConnectionError as e:
        raise ClusterError(f"Could not reach AWS to {action}: {e}. Check the network and cloud.region.") from None
    except bx.ClientError as e:
        code, message = error_code(e), error_message(e)
        if code in _BAD_CREDENTIALS:
            raise ConfigError(f"AWS refused the credentials ({code}: {message}); {HOW_TO_GIVE_CREDENTIALS}.") from None
        if code in _DENIED:
            raise ClusterError(f"These AWS credentials may not {action} ({code}): {message}") from None
        if code.startswith("InvalidInstanceType"):
            raise ConfigError(f"Unknown instance type: {message}. Check cloud.master_instance_type and "
                              "cloud.worker_instance_type (e.g. m5.large).") from None
        if code.startswith("InvalidAMIID"):
            raise ConfigError(f"cloud.image: {message} ({code}); give an AMI id that exists in this region.") from None
        raise ClusterError(f"AWS could not {action}: {code}: {message}") from None
