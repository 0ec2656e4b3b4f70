"""The configuration registry: a job's Conf by name, so a worker needs only the registry's address.

See :mod:`deepgrid.registry.base` (the protocol, URLs, :func:`find_master`),
:mod:`deepgrid.registry.files` (the default) and :mod:`deepgrid.registry.zookeeper`.
"""

from deepgrid.registry.base import (
    REGISTRY_ENV,
    ConfigRegistry,
    find_master,
    registry_from_url,
    resolve_registry_url,
)

__all__ = ["REGISTRY_ENV", "ConfigRegistry", "find_master", "registry_from_url", "resolve_registry_url"]
