"""Joining Ray (``nagindex.cluster``): ``local`` is always a private cluster, an address that cannot be
reached or refuses the token fails within the bound naming it, and a head lost mid-ingest is an error
within the bound after which the same ingest on a private cluster resumes to the uninterrupted index.

Every Ray client here runs in a subprocess with its own environment: a cluster that goes away would
otherwise leave this process waiting on it (Ray ends a driver a minute after losing its GCS), and the
machine may run other clusters that ``auto`` must not find.
"""
from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from nagindex.index.sharded import open_index
from nagindex.ingest.run import ingest
from tests.ingest.test_sharded import _rows
from tests.raycluster import free_port, kill_head, ray_head

pytest.importorskip("ray")

BOUND = 4  # NAGINDEX_RAY_CONNECT_TIMEOUT in the subprocesses
MARGIN = 6  # subprocess start, Ray's import and a last probe

CONNECT = """
import json, sys, time
if sys.argv[2] == "no-running-gcs":  # other clusters on this machine are not "a running cluster" here
    import ray._private.services as services
    services.find_gcs_addresses = lambda: frozenset()
from nagindex.cluster import connect
from nagindex.errors import NagIndexError
t = time.monotonic()
try:
    ray = connect(sys.argv[1])
    out = {"gcs": ray.get_runtime_context().gcs_address, "seven": ray.get(ray.remote(lambda: 7).remote())}
except NagIndexError as exc:
    out = {"error": str(exc)}
out["elapsed"] = time.monotonic() - t
print(json.dumps(out))
"""

INGEST = """
import sys, time
from pathlib import Path
from nagindex.cli import main
from nagindex.ingest import distributed, sharded

stall, marker = sys.argv[1], Path(sys.argv[2])
if stall == "encoders":  # the one encode actor stalls on the second window: the first is committed
    class StallsOnSecondWindow(distributed._EncodeWorker):
        windows = 0

        def encode(self, window):
            self.windows += 1
            if self.windows == 2:
                marker.touch()
                time.sleep(3600)
            return super().encode(window)

    distributed._EncodeWorker = StallsOnSecondWindow
elif stall == "shards":  # shard-00000 finishes, shard-00001 stalls
    ingest_shard = sharded._ingest_shard

    def first_shard_only(files, shard_dir, options):
        if Path(shard_dir).name != "shard-00000":
            time.sleep(3600)
        result = ingest_shard(files, shard_dir, options)
        marker.touch()
        return result

    sharded._ingest_shard = first_shard_only
main(sys.argv[3:], prog_name="nagindex")
"""


def _env(tmp_path: Path, **extra: str) -> dict[str, str]:
    """This environment without Ray's pointers to a cluster or token, a home of its own (a private
    cluster writes its token to ~/.ray) and the short connect bound."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_", "NAGINDEX_RAY"))}
    home = tmp_path / "home"
    home.mkdir(exist_ok=True)
    return {**env, "HOME": str(home), "NAGINDEX_RAY_CONNECT_TIMEOUT": str(BOUND), **extra}


def _connect(address: str, env: dict[str, str], *, no_running_gcs: bool = False) -> dict:
    mode = "no-running-gcs" if no_running_gcs else "-"
    proc = subprocess.run([sys.executable, "-c", CONNECT, address, mode], env=env, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return {**json.loads(proc.stdout.splitlines()[-1]), "stderr": proc.stderr}


@pytest.mark.parametrize("value", ["soon", "0", "-5"])
def test_the_bound_must_be_a_positive_number_of_seconds(monkeypatch, value):
    from nagindex.cluster import connect_timeout
    from nagindex.errors import NagIndexError

    monkeypatch.setenv("NAGINDEX_RAY_CONNECT_TIMEOUT", value)
    with pytest.raises(NagIndexError) as err:
        connect_timeout()
    assert str(err.value) == f"NAGINDEX_RAY_CONNECT_TIMEOUT must be a positive number of seconds, got {value!r}"
    monkeypatch.setenv("NAGINDEX_RAY_CONNECT_TIMEOUT", "2.5")
    assert connect_timeout() == 2.5
    monkeypatch.delenv("NAGINDEX_RAY_CONNECT_TIMEOUT")
    assert connect_timeout() == 30.0


@pytest.mark.parametrize("pointer", ["RAY_ADDRESS", "current-cluster file"])
def test_local_starts_a_private_cluster_whatever_ray_last_pointed_at(tmp_path, pointer):
    dead = f"127.0.0.1:{free_port()}"
    ray_tmp = Path(tempfile.mkdtemp(prefix="rl", dir="/tmp"))  # Ray's default temp dir (RAY_TMPDIR/ray)
    try:
        (ray_tmp / "ray").mkdir()
        (ray_tmp / "ray" / "ray_current_cluster").write_text(dead)
        pointers = {"RAY_ADDRESS": dead} if pointer == "RAY_ADDRESS" else {}
        env = _env(tmp_path, RAY_TMPDIR=str(ray_tmp), **pointers)
        out = _connect("local", env)
    finally:
        shutil.rmtree(ray_tmp, ignore_errors=True)
    assert "error" not in out, out["error"]
    assert out["seven"] == 7 and out["gcs"].rpartition(":")[2] != dead.rpartition(":")[2]
    # Ray >= 2.59 turns token authentication on for a cluster it starts: it works with it on
    assert (tmp_path / "home" / ".ray" / "auth_token").is_file()


def test_an_unreachable_address_fails_within_the_bound_naming_it(tmp_path):
    port = free_port()
    out = _connect(f"127.0.0.1:{port}", _env(tmp_path))
    assert out["elapsed"] < BOUND + MARGIN
    assert out["error"].startswith(f"cannot reach the Ray cluster at 127.0.0.1:{port} (")
    assert f":{port}) within {BOUND} s (Connection refused; NAGINDEX_RAY_CONNECT_TIMEOUT sets how long). Nothing " \
           "was run on it, so nothing is lost: the same command works once it is up (an ingest resumes where it " \
           "stopped), or use --ray-address local for a private cluster on this machine" in out["error"]


def test_auto_without_a_running_cluster_says_so(tmp_path):
    ray_tmp = Path(tempfile.mkdtemp(prefix="ra", dir="/tmp"))
    try:
        out = _connect("auto", _env(tmp_path, RAY_TMPDIR=str(ray_tmp)), no_running_gcs=True)
    finally:
        shutil.rmtree(ray_tmp, ignore_errors=True)
    assert out["error"] == ("--ray-address auto found no running Ray cluster (RAY_ADDRESS is not set and no "
                            "`ray start` cluster runs here): start one (`ray start --head`), give its address, "
                            "or use --ray-address local for a private cluster on this machine")
    assert out["elapsed"] < MARGIN


@pytest.mark.parametrize("pointer", ["RAY_ADDRESS", "current-cluster file"])
def test_auto_pointed_at_a_dead_cluster_fails_within_the_bound_naming_it(tmp_path, pointer):
    port = free_port()
    ray_tmp = Path(tempfile.mkdtemp(prefix="ra", dir="/tmp"))
    try:
        (ray_tmp / "ray").mkdir()
        (ray_tmp / "ray" / "ray_current_cluster").write_text(f"127.0.0.1:{port}")
        env = _env(tmp_path, RAY_TMPDIR=str(ray_tmp),
                   **({"RAY_ADDRESS": f"127.0.0.1:{port}"} if pointer == "RAY_ADDRESS" else {}))
        out = _connect("auto", env, no_running_gcs=True)
    finally:
        shutil.rmtree(ray_tmp, ignore_errors=True)
    source = ", from RAY_ADDRESS" if pointer == "RAY_ADDRESS" else ""
    assert out["error"].startswith("cannot reach the Ray cluster at ")
    assert f":{port} (auto{source}) within {BOUND} s (Connection refused;" in out["error"]
    assert out["elapsed"] < BOUND + MARGIN


def test_a_wrong_token_is_one_error_naming_the_address_and_where_the_token_goes(tmp_path):
    token = secrets.token_hex(16)
    with ray_head(_env(tmp_path, RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=token)) as (address, _):
        right = _connect(address, _env(tmp_path, RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=token))
        wrong = _connect(address, _env(tmp_path, RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=secrets.token_hex(16)))
        none = _connect(address, _env(tmp_path))
    assert right["seven"] == 7
    help_ = ("set RAY_AUTH_MODE=token and give this process the cluster's token (`ray get-auth-token` on its "
             "head) in RAY_AUTH_TOKEN, or in the file RAY_AUTH_TOKEN_PATH names (default ~/.ray/auth_token)")
    for out, mode in [(wrong, "token"), (none, "unset")]:
        assert out["error"].startswith(f"the Ray cluster at {address} (")
        assert out["error"].endswith(f") refused this process's authentication token (RAY_AUTH_MODE is {mode}): "
                                     + help_)
        assert out["elapsed"] < MARGIN and out["stderr"].count("InvalidAuthToken") <= 1  # not Ray's 20 retries


def _corpus(golden_dir: Path, root: Path, files: int) -> Path:
    """The golden pool as ``files`` jsonl inputs (one per shard)."""
    pool = pq.read_table(golden_dir / "data/pool/pool.parquet").to_pylist()
    rows = [{"docid": r["docid"], "doc": r["doc"]} for r in pool]
    root.mkdir()
    for i in range(files):
        (root / f"{i}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows[i::files]))
    return root


def _lose_head(driver: subprocess.Popen, head: subprocess.Popen, marker: Path, address: str,
               then: Callable[[], object] = lambda: None) -> tuple[str, float]:
    """Once ``driver`` reaches ``marker``, lose the cluster (its head and workers killed at once), then ``then()``;
    the driver must fail with one "lost the Ray cluster" error: that line and the seconds from the loss to exit."""
    try:
        deadline = time.monotonic() + 240
        while not marker.exists():
            assert driver.poll() is None and time.monotonic() < deadline, driver.stderr.read()[-3000:]
            time.sleep(0.2)
        kill_head(head)
        lost = time.monotonic()
        then()
        _, stderr = driver.communicate(timeout=120)
        took = time.monotonic() - lost
    finally:
        driver.kill()
    assert driver.returncode == 1, stderr[-3000:]
    (error,) = [line for line in stderr.splitlines() if line.startswith("Error:")]
    assert error.startswith(f"Error: lost the Ray cluster at {address} (GCS "), error
    print(error, f"({took:.1f} s)")
    assert took < BOUND + 3 * MARGIN, took  # the bound, a last wait and the interpreter's exit
    return error, took


@pytest.mark.parametrize("stall", ["encoders", "shards"])
def test_a_head_lost_mid_ingest_fails_within_the_bound_and_local_resumes(golden_dir, tmp_path, stall):
    model = str(golden_dir / "model")
    corpus = _corpus(golden_dir, tmp_path / "corpus", 2)
    idx, marker = tmp_path / "idx", tmp_path / "stalled"
    settings = ["--backbone", model, "--top-k", "8", "--max-length", "64", "--commit-every", "4", "--device", "cpu"]
    settings += ["--shards", "2"] if stall == "shards" else ["--ray-workers", "1"]
    token = secrets.token_hex(16)
    env = _env(tmp_path, RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=token)

    def run(address: str, stall: str, **kw) -> subprocess.Popen:
        args = [sys.executable, "-c", INGEST, stall, str(marker), "ingest", str(corpus), "--index", str(idx),
                *settings, "--ray-address", address]
        return subprocess.Popen(args, env=env, stderr=subprocess.PIPE, text=True, **kw)

    with ray_head(env) as (address, head):
        error, _ = _lose_head(run(address, stall), head, marker, address)
    kept = ("the windows committed before it are kept" if stall == "encoders"
            else "every shard keeps what it committed") + ": run the same command again to resume"
    assert error.endswith(kept), error
    if stall == "encoders":
        assert len(open_index(idx)) == 4  # the first window
    else:
        assert len(open_index(idx / "shard-00000")) == 8  # the first shard, whole; the index is reconciled last

    resumed = run("local", "none")
    _, stderr = resumed.communicate(timeout=600)
    assert resumed.returncode == 0, stderr[-3000:]
    ingest([corpus], tmp_path / "one", backbone=model, top_k=8, max_length=64, commit_every=4, device="cpu")
    assert _rows(idx) == _rows(tmp_path / "one")
    if stall == "encoders":
        assert open_index(idx).docids.take(range(15)) == open_index(tmp_path / "one").docids.take(range(15))


QUERY = """
import sys, time
from pathlib import Path
from nagindex.cli import main
from nagindex.query import rank

go, marker = Path(sys.argv[1]), Path(sys.argv[2])
histograms = rank.Ranking.histograms

def after_the_scan(self, targets):  # the shards have scored; the coordinator waits until the head is gone
    marker.touch()
    while not go.exists():
        time.sleep(0.05)
    return histograms(self, targets)

rank.Ranking.histograms = after_the_scan
main(sys.argv[3:], prog_name="nagindex")
"""


def test_a_head_lost_mid_query_fails_within_the_bound_naming_it(tmp_path):
    from tests.query import pools

    files = pools.write_pool(tmp_path / "data", sizes=(50, 40))
    target = pools.write_targets(tmp_path / "data")["alpha"]
    idx = pools.build_index(files, tmp_path / "idx", 2)
    env = _env(tmp_path, RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=secrets.token_hex(16))
    go, marker = tmp_path / "go", tmp_path / "scored"
    with ray_head(env) as (address, head):
        driver = subprocess.Popen([sys.executable, "-c", QUERY, str(go), str(marker), "query", "--index", str(idx),
                                   "--target-features", str(target), "--k", "5", "-o", str(tmp_path / "sel.parquet"),
                                   "--ray-address", address], env=env, stderr=subprocess.PIPE, text=True)
        error, _ = _lose_head(driver, head, marker, address, then=go.touch)
    assert error.endswith("a query keeps nothing but its target cache: run it again once the cluster is back, "
                          "or with --ray-address local"), error
    assert not (tmp_path / "sel.parquet").exists()
