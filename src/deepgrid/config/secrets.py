"""Passwords in URLs: masked wherever a configuration is shown or stored at rest.

A state store's or a registry's URL may carry a password (``redis://:secret@host``). It lives here,
beside the configuration that holds those URLs, so that every layer above (model files, run
checkpoints, the state trackers, the registries) masks them the same way.
"""

from __future__ import annotations

import re
from typing import Any

# The fields of a Conf that hold URLs, which may carry a password.
URL_FIELDS = ("state_url", "registry_url", "engine_address")
# The password runs to the last '@' of the URL (a password may hold '@' or '/'), so the match is
# greedy up to whitespace.
_SECRET_IN_URL = re.compile(r"(://[^:/@\s]*:)(\S+)(@)")


def mask_url(url: str) -> str:
    """The URL with anything between ``//`` and the host's ``@`` hidden (a password may be there)."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        return "***" if "@" in url else url
    if "@" not in rest:
        return url
    # The last '@': a password with an unescaped '/' or '@' in it must not leak either.
    userinfo, host_and_rest = rest.rsplit("@", 1)
    user = userinfo.split(":", 1)[0] if ":" in userinfo else ""  # a lone name may be a password
    return f"{scheme}://{user}:***@{host_and_rest}"


def mask_secrets(text: str) -> str:
    """``text`` with every URL's password replaced by ``***`` (up to the URL's last '@')."""
    return _SECRET_IN_URL.sub(r"\1***\3", text)


def public_conf(conf: dict[str, Any]) -> dict[str, Any]:
    """A Conf's dict with every URL's password masked (``***``): what may be stored at rest."""
    return {k: mask_url(v) if k in URL_FIELDS and isinstance(v, str) else v for k, v in conf.items()}
