"""The one way nagindex joins a Ray cluster (ingest workers, encode actors, query shard actors), and notices
losing it.

Left to itself Ray waits on a cluster that is gone: ``ray.init`` retries an unreachable address for many
minutes (20 rounds of a 30 s GCS time-out), a wrong authentication token for 20 s with a log line a try,
and a driver whose cluster dies mid-run blocks in ``ray.get`` until Ray ends the process a minute later
without a word from nagindex. So ``connect`` checks the address first (a TCP connect, then one GCS call
that also proves the token) and ``ClusterWatch`` waits on results while checking the cluster is still
there, both within ``connect_timeout()`` seconds, failing with one ``NagIndexError`` naming the address.
"""
from __future__ import annotations

import os
import socket
import threading
import time
from typing import Any

from nagindex.errors import NagIndexError

TIMEOUT_ENV = "NAGINDEX_RAY_CONNECT_TIMEOUT"
DEFAULT_TIMEOUT_S = 30.0
_INIT = dict(include_dashboard=False, log_to_driver=False, configure_logging=False)
_TOKEN_HELP = ("set RAY_AUTH_MODE=token and give this process the cluster's token (`ray get-auth-token` on its "
               "head) in RAY_AUTH_TOKEN, or in the file RAY_AUTH_TOKEN_PATH names (default ~/.ray/auth_token)")


def connect_timeout() -> float:
    """How long a cluster may stay unreachable, when joining it or mid-run, before nagindex gives up."""
    raw = os.environ.get(TIMEOUT_ENV)
    if raw is None:
        return DEFAULT_TIMEOUT_S
    try:
        value = float(raw)
    except ValueError:
        value = 0.0
    if not value > 0:
        raise NagIndexError(f"{TIMEOUT_ENV} must be a positive number of seconds, got {raw!r}")
    return value


def connect(address: str) -> Any:
    """The ``ray`` module, connected to ``address`` unless it is already.

    ``local`` always starts a private cluster on this machine (never the one RAY_ADDRESS or Ray's last
    ``ray start`` points at, which may be gone); ``auto`` joins the running cluster Ray finds (RAY_ADDRESS,
    else the last ``ray start`` here); ``host:port`` (a GCS) or ``ray://host:port`` (Ray Client) joins that
    one. A cluster not reachable within ``connect_timeout()`` seconds, or refusing this process's
    authentication token, is a ``NagIndexError`` naming the address.
    """
    try:
        import ray
    except ImportError:
        raise NagIndexError("--ray-address needs Ray: pip install 'nagindex[ray]'") from None
    if ray.is_initialized():
        return ray
    if address == "local":
        ray.init(address="local", **_INIT)
        return ray
    bound = connect_timeout()
    deadline = time.monotonic() + bound
    target = _resolve(address)
    _await_port(target, address, deadline, bound)
    if "://" not in target:
        _enable_token_if_available()
        _check_gcs(target, address, deadline, bound)
    ray.init(address=address, **_INIT)
    return ray


def _resolve(address: str) -> str:
    """The endpoint ``ray.init(address)`` will dial, found as Ray finds it: ``host:port`` or ``ray://...``."""
    from ray._private.services import canonicalize_bootstrap_address

    if address == "auto":
        env = os.environ.get("RAY_ADDRESS", "")
        if "://" in env:
            return env
        try:
            found = canonicalize_bootstrap_address("auto")
        except ConnectionError:
            raise NagIndexError("--ray-address auto found no running Ray cluster (RAY_ADDRESS is not set and no "
                                "`ray start` cluster runs here): start one (`ray start --head`), give its "
                                "address, or use --ray-address local for a private cluster on this "
                                "machine") from None
        return found
    if "://" in address:
        return address
    try:
        return canonicalize_bootstrap_address(address)
    except ValueError:
        raise NagIndexError(f"--ray-address {address!r} is not local, auto, host:port or ray://host:port") from None


def _enable_token_if_available() -> None:
    """Send this machine's Ray token (``~/.ray/auth_token``, ``RAY_AUTH_TOKEN``) to a cluster joined by address,
    unless ``RAY_AUTH_MODE`` says otherwise: ``ray start`` turns authentication on wherever a token exists
    (Ray >= 2.52), while ``ray.init(address)`` sends one only for ``auto``. A cluster without authentication
    ignores the token, so a team's ``ray start --head`` works either way. Older Rays have no tokens."""
    try:
        from ray._private.authentication.authentication_token_setup import \
            maybe_enable_token_auth_if_token_available
    except ImportError:
        return
    maybe_enable_token_auth_if_token_available(warn_if_disabled=False)


def _host_port(target: str) -> tuple[str, int]:
    host, _, port = target.split("://")[-1].rpartition(":")
    return host.strip("[]"), int(port)


def _reachable(target: str, timeout: float) -> OSError | None:
    """``None`` when ``target`` accepts a TCP connection within ``timeout`` seconds, else why not."""
    try:
        socket.create_connection(_host_port(target), timeout=timeout).close()
    except OSError as exc:
        return exc
    return None


def _await_port(target: str, address: str, deadline: float, bound: float) -> None:
    """Wait until ``target`` accepts connections (a head may be starting or restarting), up to the deadline."""
    while (why := _reachable(target, max(0.1, min(5.0, deadline - time.monotonic())))) is not None:
        if time.monotonic() + 1.0 >= deadline:
            raise NagIndexError(f"cannot reach the Ray cluster at {_named(address, target)} within {bound:g} s "
                                f"({why.strerror or why}; {TIMEOUT_ENV} sets how long). Nothing was run on it, so "
                                "nothing is lost: the same command works once it is up (an ingest resumes where "
                                "it stopped), or use --ray-address local for a private cluster on this machine")
        time.sleep(1.0)


def _check_gcs(target: str, address: str, deadline: float, bound: float) -> None:
    """One GCS call, which fails at once on a wrong token where ``ray.init`` retries 20 times. In a daemon
    thread: on a port that accepts but never answers it blocks for Ray's 30 s GCS time-out."""
    import ray
    from ray._raylet import GcsClient

    outcome: list[BaseException | None] = []

    def call() -> None:
        try:
            GcsClient(address=target)
        except BaseException as exc:  # handed to the caller's thread
            outcome.append(exc)
        else:
            outcome.append(None)

    thread = threading.Thread(target=call, name="nagindex-gcs-check", daemon=True)
    thread.start()
    thread.join(max(0.1, deadline - time.monotonic()))
    named = _named(address, target)
    if not outcome:
        raise NagIndexError(f"{named} accepts connections but no Ray GCS answered within {bound:g} s "
                            f"({TIMEOUT_ENV} sets how long): is it a Ray head's GCS port (`ray start --head "
                            "--port`, default 6379)?")
    exc = outcome[0]
    if exc is None:
        return
    if isinstance(exc, getattr(ray.exceptions, "AuthenticationError", ())) or "InvalidAuthToken" in str(exc):
        mode = os.environ.get("RAY_AUTH_MODE") or "unset"
        raise NagIndexError(f"the Ray cluster at {named} refused this process's authentication token "
                            f"(RAY_AUTH_MODE is {mode}): {_TOKEN_HELP}") from None
    raise NagIndexError(f"cannot join the Ray cluster at {named}: {exc}") from None


def _named(address: str, target: str) -> str:
    """The address as the user gave it, and what it resolved to where that differs."""
    if address == "auto":
        return f"{target} (auto{', from RAY_ADDRESS' if os.environ.get('RAY_ADDRESS') else ''})"
    return address if target == address else f"{address} ({target})"


class ClusterWatch:
    """Waits on Ray results while checking, every few seconds, that the cluster's GCS still accepts
    connections; unreachable for ``connect_timeout()`` seconds is a ``NagIndexError`` naming the cluster and
    saying what is ``kept``. (Ray ends a driver that lost its GCS for 60 s, ``RAY_gcs_rpc_server_reconnect_
    timeout_s``, with no word from nagindex; the default bound fails first.) Through Ray Client (``ray://``)
    only Ray's own check applies: the client raises ``ConnectionError`` after its 30 s reconnect grace."""

    def __init__(self, ray: Any, address: str, kept: str) -> None:
        from ray.util.client import ray as client

        self.ray, self.address, self.kept = ray, address, kept
        self.bound = connect_timeout()
        self.poll = min(2.0, self.bound / 4)
        self.gcs: str | None = None if client.is_connected() else ray.get_runtime_context().gcs_address
        self._down_since: float | None = None

    def check(self) -> None:
        """Raise ``lost`` once the GCS has refused connections for the bound."""
        if not self.gone():
            self._down_since = None
            return
        now = time.monotonic()
        if self._down_since is None:
            self._down_since = now
        if now - self._down_since >= self.bound:
            raise self.lost(f"it has not answered for {self.bound:g} s ({TIMEOUT_ENV} sets how long)")

    def gone(self) -> bool:
        """Whether the GCS refuses connections now: a Ray error raised then means the cluster was lost."""
        return self.gcs is not None and _reachable(self.gcs, self.poll) is not None

    def lost(self, why: str) -> NagIndexError:
        """The error for a lost cluster, ``why`` saying how it showed."""
        if self.address == "local":
            where = f"the private Ray cluster started here (GCS {self.gcs})"
        else:
            where = f"the Ray cluster at {self.address}" + (f" (GCS {self.gcs})" if self.gcs else "")
        return NagIndexError(f"lost {where}: {why}; {self.kept}")

    def get(self, ref: Any) -> Any:
        """``ray.get(ref)``, checking the cluster while it waits."""
        while not self.ray.wait([ref], timeout=self.poll)[0]:
            self.check()
        return self.ray.get(ref)
