"""The one way nagindex joins a Ray cluster (ingest workers, encode actors, query shard actors)."""
from __future__ import annotations

from typing import Any

from nagindex.errors import NagIndexError


def connect(address: str) -> Any:
    """The ``ray`` module, connected to ``address`` unless it is already: ``local`` starts a cluster here,
    ``auto`` joins the running one, or ``ray://host:port``."""
    try:
        import ray
    except ImportError:
        raise NagIndexError("--ray-address needs Ray: pip install 'nagindex[ray]'") from None
    if not ray.is_initialized():
        ray.init(address=None if address == "local" else address, include_dashboard=False,
                 log_to_driver=False, configure_logging=False)
    return ray
