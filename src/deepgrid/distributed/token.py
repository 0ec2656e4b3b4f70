"""Ray's token: every cluster connection is authenticated (``RAY_AUTH_MODE=token``).

A master on a new machine has no token yet: it makes one, readable by its owner only, and
says how a worker machine gets it. A worker machine's token is checked against the master's
engine before anything else is started, so a wrong or missing one is refused in a second with
one line, instead of Ray retrying for twenty.

Ray looks for the token in ``$RAY_AUTH_TOKEN``, then the file ``$RAY_AUTH_TOKEN_PATH``, then
``~/.ray/auth_token``; deepgrid uses the same places.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path

from deepgrid.errors import ClusterError, ConfigError

TOKEN_ENV = "RAY_AUTH_TOKEN"
TOKEN_PATH_ENV = "RAY_AUTH_TOKEN_PATH"
HOW_TO_SHARE = ("a worker machine needs the same token: copy the file to ~/.ray/auth_token there, "
                "or pass it with `deepgrid worker --token-file FILE`, or set RAY_AUTH_TOKEN")


def token_file() -> Path:
    """Where Ray reads the token file from on this machine."""
    return Path(os.environ.get(TOKEN_PATH_ENV) or Path.home() / ".ray" / "auth_token").expanduser()


def token_source() -> str | None:
    """Where this machine's token comes from, or None when it has none."""
    if os.environ.get(TOKEN_ENV, "").strip():
        return f"${TOKEN_ENV}"
    path = token_file()
    try:
        return str(path) if path.read_text().strip() else None
    except OSError:
        return None


def require_token_auth() -> None:
    """Refuse a Ray too old to authenticate (before 2.52): it would run the cluster open."""
    try:
        import ray._private.authentication.authentication_token_generator  # noqa: F401
    except ImportError:
        import ray

        raise ClusterError(f"Ray {ray.__version__} has no token authentication, so its cluster would be open to "
                           "anyone on the network; install Ray 2.52 or later: pip install 'ray[default]>=2.52'.") from None


def ensure_token(say: Callable[[str], None]) -> str:
    """A master's token: the one this machine has, or a new one (mode 0600). Says where it is."""
    require_token_auth()
    source = token_source()
    if source is not None:
        # Ray caches the token it read in this process: a process whose HOME or token changed since
        # (a second run in the same process) would otherwise present the old one to the new head.
        _forget_cached_token()
        say(f"deepgrid: cluster traffic is authenticated with the Ray token from {source}; {HOW_TO_SHARE}")
        return source
    from ray._private.authentication.authentication_token_generator import generate_new_authentication_token

    path = token_file()
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    try:
        # O_EXCL: never overwrite a token another process made meanwhile; 0600 from the start.
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return str(path)
    with os.fdopen(fd, "w") as f:
        f.write(generate_new_authentication_token())
    _forget_cached_token()
    say(f"deepgrid: created a Ray token in {path} (mode 0600); {HOW_TO_SHARE}")
    return str(path)


def use_token_file(path: str) -> None:
    """``--token-file FILE``: authenticate this process and the Ray processes it starts with FILE."""
    file = Path(path).expanduser()
    try:
        text = file.read_text().strip()
    except OSError as e:
        raise ConfigError(f"--token-file {path}: cannot read it ({e.strerror}); pass the file holding the "
                          "master's Ray token (its ~/.ray/auth_token).") from None
    if not text:
        raise ConfigError(f"--token-file {path} is empty; pass the file holding the master's Ray token "
                          "(its ~/.ray/auth_token).")
    os.environ[TOKEN_PATH_ENV] = str(file.resolve())
    os.environ.pop(TOKEN_ENV, None)  # the file given on the command line wins
    _forget_cached_token()


def check_token(host: str, port: int, wait_s: float = 60.0) -> None:
    """Ask the engine at host:port to accept this machine's token; fail in one line if it does not."""
    require_token_auth()
    if token_source() is None:
        raise ClusterError(f"This machine has no Ray token, and the master at {host}:{port} requires one; "
                           f"{HOW_TO_SHARE} (the master's is in its ~/.ray/auth_token).")
    _forget_cached_token()  # read the token as it is now (see ensure_token)
    from ray._raylet import GcsClient
    from ray.exceptions import AuthenticationError, RpcError

    deadline = time.monotonic() + wait_s
    while True:
        try:
            GcsClient(address=f"{host}:{port}")
            return
        except AuthenticationError:
            raise ClusterError(f"The master at {host}:{port} refused this machine's Ray token (from "
                               f"{token_source()}): it is not the master's. {HOW_TO_SHARE[0].upper()}"
                               f"{HOW_TO_SHARE[1:]} (the master's is in its ~/.ray/auth_token).") from None
        except RpcError:  # a head still starting: its port is open, its services not yet
            if time.monotonic() > deadline:
                return  # joining reports it in its own words
            time.sleep(1.0)


def _forget_cached_token() -> None:
    """Ray's token loader caches what it read; make it read again (if Ray is loaded)."""
    try:
        from ray._raylet import AuthenticationTokenLoader

        AuthenticationTokenLoader.instance().reset_cache()
    except (ImportError, AttributeError):
        pass
