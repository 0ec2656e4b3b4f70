"""Where the dashboard listens (``Conf.dashboard``), checked when the Conf is made.

Kept free of heavy imports: ``deepgrid.config.conf`` calls :func:`check_dashboard` for every Conf.
"""

from __future__ import annotations

import argparse
import ipaddress
from typing import Any

from deepgrid.errors import ConfigError, invalid

DEFAULT = "127.0.0.1:0"  # loopback, a free port: the dashboard is on unless turned off
OFF_WORDS = ("off", "none", "no", "false")
_EXPECTED = "HOST:PORT (e.g. 127.0.0.1:0, 0.0.0.0:8265, [::1]:0), or off"


def split_address(text: str) -> tuple[str, int]:
    """'HOST:PORT' or '[IPV6]:PORT' -> (host, port); port 0 asks for a free one."""
    host, sep, port_text = text.rpartition(":")
    bracketed = host.startswith("[") and host.endswith("]")
    if bracketed:
        host = host[1:-1]
    if not sep or not host or not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
        raise ConfigError(invalid("dashboard", text, _EXPECTED, "Use --no-dashboard to turn it off."))
    if ":" in host and not (bracketed and _is_ip(host)):
        raise ConfigError(invalid("dashboard", text, _EXPECTED, "Write an IPv6 address in brackets: [::1]:0."))
    return host, int(port_text)


def check_dashboard(value: Any) -> str | None:
    """The Conf's ``dashboard`` normalised: None when turned off, else a checked 'HOST:PORT'."""
    if value is None or (isinstance(value, str) and value.strip().lower() in OFF_WORDS):
        return None
    if not isinstance(value, str):
        raise ConfigError(invalid("dashboard", value, _EXPECTED))
    split_address(value.strip())
    return value.strip()


def is_loopback(host: str) -> bool:
    """True for addresses only this machine can reach: no token is asked for there."""
    if host.lower() == "localhost":
        return True
    return _is_ip(host) and ipaddress.ip_address(host).is_loopback


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def url_host(host: str) -> str:
    """The host part of a URL: IPv6 in brackets."""
    return f"[{host}]" if ":" in host else host


# -- the flags of `deepgrid train` and `deepgrid master` --------------------------------------------


def add_dashboard_flags(parser: argparse.ArgumentParser) -> None:
    """--dashboard / --no-dashboard: where the master serves its live page (Conf.dashboard)."""
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--dashboard", metavar="HOST:PORT",
                       help="serve the live dashboard there (default 127.0.0.1:0: this machine, a free port; "
                            "any other address asks for the token printed with the URL)")
    group.add_argument("--no-dashboard", action="store_true", help="serve no dashboard")


def dashboard_flag(args: argparse.Namespace) -> str | None:
    """The Conf.dashboard the flags ask for; None: the Conf's own."""
    return "off" if getattr(args, "no_dashboard", False) else getattr(args, "dashboard", None)
