"""Query sessions: many queries at once on the same warm shard actors (threads and separate processes),
lost actors rebuilt by re-execution after every kind of step, sessions that end with their coordinator,
and scratch that nothing leaves behind. Each query must equal its lone one-process answer, file for file."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from nagindex.query import fleet as fleet_mod
from nagindex.query.request import TargetRequest
from nagindex.query.run import query
from nagindex.query.scan import Binning
from nagindex.query.scratch import OWNER, scratch_root
from tests.query import pools

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict[str, Path]:
    from nagindex.index.clusters import build_clusters

    from nagindex.query.decontam import test_requests

    (_, _, questions), = list(test_requests("arc_challenge"))
    root = tmp_path_factory.mktemp("sessions")
    # every document has a text; one in 40 is an ARC-Challenge test question (decontamination removes it)
    files = pools.write_pool(root / "data", texts=lambda docid: questions[zlib.crc32(docid.encode()) % len(questions)]
                             if _planted(docid) else f"an ordinary passage, {docid}")
    out = dict(pools.write_targets(root / "data"))
    out["quality"] = pools.write_quality(root / "data", files)
    out["idx"] = pools.build_index(files, root / "idx3", 3)
    build_clusters(out["idx"], radius=1400, method="flat")
    return out


def _planted(docid: str) -> bool:
    return zlib.crc32(docid.encode()) % 40 == 0


def _forms(d: dict[str, Path]) -> dict[str, tuple[list[TargetRequest], dict]]:
    """Every query form that keeps state on a shard: plan, combine, sample, caps, clusters, union turns."""
    def t(name: str, weight: float = 1.0) -> TargetRequest:
        return TargetRequest("features", str(d[name]), weight=weight)

    return {
        "paper": ([t("alpha", 2), t("beta"), t("gamma")], {"fraction": 0.3}),
        "union": ([t("alpha"), t("beta"), t("gamma")], {"k": 40, "mode": "union"}),
        "quality": ([t("alpha"), t("beta")], {"k": 44, "quality_file": str(d["quality"]), "quality_col": "q"}),
        "sample": ([t("gamma")], {"fraction": 0.2, "sample": True, "seed": 3}),
        "caps": ([t("alpha")], {"fraction": 0.2, "group_by": "source", "max_group_share": 0.4}),
        "cluster": ([t("beta")], {"k": 60, "one_per_cluster": True}),
        "power": ([t("alpha"), t("gamma")], {"k": 60, "power": 0.5}),
        "decontam": ([t("alpha")], {"fraction": 0.5, "decontaminate_against": "arc_challenge", "with_text": True}),
    }


FORMS = list(_forms({n: Path(n) for n in ("alpha", "beta", "gamma", "quality")}))


@pytest.fixture(scope="module")
def alone(data) -> dict[str, object]:
    """Each form's selection run alone, in process: the answer every other run must equal."""
    return {form: query(targets, data["idx"], **options).table for form, (targets, options) in _forms(data).items()}


def test_every_form_really_keeps_its_state(data, alone):
    """One per cluster changes the selection, decontamination removes planted test questions."""
    targets, options = _forms(data)["cluster"]
    plain = query(targets, data["idx"], k=60).table
    assert plain.column("docid").to_pylist() != alone["cluster"].column("docid").to_pylist()
    targets, options = _forms(data)["decontam"]
    res = query(targets, data["idx"], **options)
    removed = res.contamination.column("docid").to_pylist()
    assert len(removed) > 3 and all(_planted(d) for d in removed)
    assert res.table.equals(alone["decontam"])


def test_concurrent_local_queries_in_threads(data, alone):
    forms = _forms(data)
    with ThreadPoolExecutor(len(forms)) as pool:
        got = dict(zip(forms, pool.map(lambda f: query(forms[f][0], data["idx"], **forms[f][1]).table, forms)))
    for form in forms:
        assert got[form].equals(alone[form]), form


@pytest.fixture(scope="module")
def cluster():
    """A ``ray start`` cluster of this test module's own, this process its driver."""
    ray = pytest.importorskip("ray")
    from tests.raycluster import ray_head

    from nagindex.cluster import connect

    with ray_head() as (address, _):
        connect(address)  # as every nagindex process joins it (token authentication where the head has it)
        try:
            yield address
        finally:
            ray.shutdown()


def test_concurrent_queries_on_the_same_warm_actors(data, alone, cluster, tmp_path):
    """Six forms at once from threads of this process and two more processes, all through the same
    named shard actors (twice over, so the second wave finds them warm): each its lone answer."""
    forms = _forms(data)
    script = tmp_path / "client.py"
    script.write_text(
        "import json, sys\n"
        "from nagindex.query.request import TargetRequest\n"
        "from nagindex.query.run import query\n"
        "for form, targets, options, out in json.loads(sys.argv[1]):\n"
        "    ts = [TargetRequest('features', p, weight=w) for p, w in targets]\n"
        "    query(ts, sys.argv[2], ray_address=sys.argv[3], out=out, **options)\n")
    jobs = {p: [(f, [(t.value, t.weight) for t in forms[f][0]], forms[f][1], str(tmp_path / f"{p}-{f}.parquet"))
                for f in forms] for p in ("p1", "p2")}
    for wave in range(2):
        procs = [subprocess.Popen([sys.executable, str(script), json.dumps(jobs[p][::1 if p == "p1" else -1]),
                                   str(data["idx"]), cluster], cwd=ROOT) for p in jobs]
        with ThreadPoolExecutor(len(forms)) as pool:
            got = dict(zip(forms, pool.map(
                lambda f: query(forms[f][0], data["idx"], ray_address=cluster, **forms[f][1]).table, forms)))
        assert [p.wait(timeout=600) for p in procs] == [0, 0]
        for form in forms:
            assert got[form].equals(alone[form]), (wave, form)
            for p in jobs:
                assert pq.read_table(tmp_path / f"{p}-{form}.parquet").equals(alone[form]), (wave, p, form)
    import ray

    actors = [ray.get_actor(a["name"], namespace="nagindex") for a in ray.util.list_named_actors(all_namespaces=True)
              if a["namespace"] == "nagindex"]
    assert len(actors) == 3  # one per shard, shared by all 36 queries
    assert all(ray.get(a.sessions.remote()) == [] for a in actors)  # every session ended, scratch freed


def _kill(ray, actor) -> None:
    """Kill a shard actor and wait until it is dead (``ray.kill`` returns before it is)."""
    ray.kill(actor, no_restart=True)
    for _ in range(100):
        try:
            ray.get(actor.sessions.remote(), timeout=10)
        except ray.exceptions.RayActorError:
            return
    raise AssertionError("the actor did not die")


@pytest.mark.parametrize("form, step, when", [
    ("paper", "score", "after"), ("paper", "histogram", "after"), ("union", "candidates", "after"),
    ("quality", "combine", "after"), ("sample", "sample", "after"), ("caps", "candidates", "after"),
    ("cluster", "candidates", "after"), ("decontam", "exclude", "after"), ("decontam", "contamination", "after"),
    ("decontam", "fetch", "before"),
])
def test_a_lost_actor_is_rebuilt_by_re_execution(data, alone, cluster, monkeypatch, form, step, when):
    """Kill shard 1's actor right after (or before) the first step of a kind: the query's answer is the
    unkilled one, because the rebuilt session replays every state-changing step first."""
    import ray

    forms, killed = _forms(data), []
    real = fleet_mod.RayFleet._run

    def run(self, name, args):
        if name == step and when == "before" and not killed:
            _kill(ray, self.actors[1])
            killed.append(name)
        out = real(self, name, args)
        if name == step and when == "after" and not killed:
            _kill(ray, self.actors[1])
            killed.append(name)
        return out

    monkeypatch.setattr(fleet_mod.RayFleet, "_run", run)
    got = query(forms[form][0], data["idx"], ray_address=cluster, **forms[form][1]).table
    assert killed and got.equals(alone[form])


def test_exclusions_survive_a_lost_actor(data, cluster, monkeypatch):
    """Decontamination's exclusions are state too: rows a check removed stay removed after the actor that
    held them is lost (before: they came back into the selection, unnoted)."""
    import ray

    from nagindex.index.sharded import shard_specs
    from nagindex.query import rank
    from nagindex.query.fleet import LocalFleet, RayFleet
    from nagindex.query.run import profile_targets
    from nagindex.query.scan import ScorePlan
    from nagindex.query.spec import QuerySpec
    from nagindex.progress import StageTimer

    def select(fleet, kill: bool):
        spec = QuerySpec.of([TargetRequest("features", str(data["alpha"]))], data["idx"], k=90)
        _, _, kept, profiles, _ = profile_targets(fleet, spec, [], StageTimer())
        rounds = []

        def check(ids):  # a third of the rows are "contaminated"
            rounds.append(len(ids))
            if kill and len(rounds) == 2:
                _kill(ray, fleet.actors[1])
            return ids[ids % 3 == 0]

        picked, _ = rank.select(fleet, ScorePlan(profiles, tuple(int(x) for x in kept)), spec.quota, [1.0],
                                "paper", False, check)
        return picked, rounds

    specs = shard_specs(data["idx"])
    local = LocalFleet.open(specs)
    try:
        want, rounds = select(local, kill=False)
    finally:
        local.close()
    assert len(rounds) >= 3  # exclusions from two rounds are replayed on the new actor
    remote = RayFleet(specs, cluster)
    try:
        got, _ = select(remote, kill=True)
    finally:
        remote.close()
    assert np.array_equal(got.part, want.part) and np.array_equal(got.row, want.row)


def _actor_of(ray, idx: Path, shard: int):
    from nagindex.index.sharded import shard_specs

    path = Path(shard_specs(idx)[shard]["path"]).resolve()
    return ray.get_actor(f"nagindex-scan:cpu:{path}", namespace="nagindex")


def test_a_dead_coordinators_sessions_end_with_their_lease(data, cluster, tmp_path):
    """A coordinator killed with kill -9 mid-query stops renewing its lease: its sessions end on the actors
    and their scratch goes, while the actors stay for the next query."""
    import ray

    script = tmp_path / "coordinator.py"
    script.write_text(
        "import sys, time\n"
        "import numpy as np\n"
        "from nagindex.query.fleet import open_fleet\n"
        "from nagindex.query.scan import ScorePlan\n"
        "fleet = open_fleet(sys.argv[1], sys.argv[2])\n"
        "fleet.score(ScorePlan(np.ones((1, 4, 48), np.int64), (0, 1, 2, 3)))\n"
        "print(fleet.qid, flush=True)\n"
        "time.sleep(600)\n")
    proc = subprocess.Popen([sys.executable, str(script), str(data["idx"]), cluster], stdout=subprocess.PIPE,
                            text=True, cwd=ROOT, env={**os.environ, "NAGINDEX_SESSION_LEASE": "2"})
    qid = proc.stdout.readline().strip()
    actor = _actor_of(ray, data["idx"], 0)
    pid = ray.get(actor.open.remote("probe", np.zeros(0, np.int64), None, 60.0))
    ray.get(actor.end.remote("probe"))

    def owned() -> list[Path]:
        return [d for d in scratch_root().glob("scan-*") if json.loads((d / OWNER).read_text())["pid"] == pid]

    assert len(owned()) == 1  # the query's scratch on this shard
    time.sleep(3)
    assert qid in ray.get(actor.sessions.remote())  # renewed: alive past its lease
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    deadline = time.monotonic() + 30
    while qid in ray.get(actor.sessions.remote()):
        assert time.monotonic() < deadline, "the dead coordinator's session never ended"
        time.sleep(0.2)
    assert owned() == []  # the ended session's scratch went with it


class _SlowBinning(Binning):
    """Histogram bins that take their time: a long call."""

    def of(self, keys):
        time.sleep(1.0)
        return super().of(keys)


class _Actor(fleet_mod.ShardActor):
    """A shard actor in this process whose exit is recorded instead of taken."""

    def __init__(self, *args) -> None:
        self.exited = threading.Event()
        super().__init__(*args)

    def _exit(self) -> None:
        self.exited.set()


def test_a_long_call_keeps_its_actor_and_idle_still_ends_it(data, monkeypatch, tmp_path):
    """Idle means no call running: a call three times longer than the idle time keeps its actor; once it
    returns and the session ends, the idle actor exits."""
    from nagindex.index.sharded import shard_specs

    monkeypatch.setenv("NAGINDEX_SCRATCH", str(tmp_path))
    spec = shard_specs(data["idx"])[0]
    actor = _Actor(spec["path"], 0, 0.3)
    actor.open("q", spec["hidden"], None, 60.0)
    stats = actor.call("q", "score", _plan())
    binning = _SlowBinning(**vars(Binning.over(stats["key_lo"][0], stats["key_hi"][0], True)))
    started = time.monotonic()
    (counts, _), = actor.call("q", "histogram", [binning])
    assert counts.sum() == stats["rows"]
    assert time.monotonic() - started >= 1.0 and not actor.exited.is_set()
    actor.end("q")
    assert actor.exited.wait(5)


def _plan():
    from nagindex.query.scan import ScorePlan

    return ScorePlan(np.ones((1, 4, 48), np.int64), (0, 1, 2, 3))


def test_a_silent_coordinators_session_ends_and_frees_its_scratch(data, monkeypatch, tmp_path):
    from nagindex.index.sharded import shard_specs

    monkeypatch.setenv("NAGINDEX_SCRATCH", str(tmp_path))
    spec = shard_specs(data["idx"])[0]
    actor = _Actor(spec["path"], 0, 60.0)
    actor.open("kept", spec["hidden"], None, 60.0)
    actor.open("silent", spec["hidden"], None, 0.3)
    for q in ("kept", "silent"):
        actor.call(q, "score", _plan())
    assert len(list(scratch_root().iterdir())) == 2
    deadline = time.monotonic() + 10
    while "silent" in actor.sessions():
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert actor.sessions() == ["kept"] and len(list(scratch_root().iterdir())) == 1
    with pytest.raises(fleet_mod.SessionGone):
        actor.call("silent", "stats")
    actor.end("kept")
    assert list(scratch_root().iterdir()) == []


def test_a_killed_query_leaves_nothing_the_next_one_does_not_sweep(data, tmp_path):
    """``kill -9`` in the middle of a query (after its scans wrote their scratch): the next query, in
    another process, removes what it left; its own answer is unchanged."""
    env = {**os.environ, "NAGINDEX_SCRATCH": str(tmp_path)}
    script = tmp_path / "killed.py"
    script.write_text(
        "import os, signal, sys\n"
        "from nagindex.query import rank\n"
        "from nagindex.query.request import TargetRequest\n"
        "from nagindex.query.run import query\n"
        "real = rank.Ranking.histograms\n"
        "def histograms(self, targets):\n"
        "    os.kill(os.getpid(), signal.SIGKILL)\n"
        "rank.Ranking.histograms = histograms\n"
        "query([TargetRequest('features', sys.argv[2])], sys.argv[1], k=5)\n")
    proc = subprocess.run([sys.executable, str(script), str(data["idx"]), str(data["alpha"])], cwd=ROOT, env=env)
    assert proc.returncode == -signal.SIGKILL
    root = tmp_path / f"nagindex-scratch-{os.getuid()}"
    left = sorted(p.name for p in root.iterdir())
    assert len(left) == 3 and all((root / name / "sums.npy").exists() for name in left)  # one per shard
    again = subprocess.run([sys.executable, "-c", (
        "import sys\nfrom nagindex.query.request import TargetRequest\nfrom nagindex.query.run import query\n"
        "print(query([TargetRequest('features', sys.argv[2])], sys.argv[1], k=5).table.column('docid').to_pylist())")
        , str(data["idx"]), str(data["alpha"])], cwd=ROOT, env=env, capture_output=True, text=True, check=True)
    assert list(root.iterdir()) == []
    want = query([TargetRequest("features", str(data["alpha"]))], data["idx"], k=5).table.column("docid").to_pylist()
    assert again.stdout.strip() == str(want)


@pytest.mark.parametrize("step", [None, "check_chosen", "sort_chosen", "write_chosen"])
def test_parts_written_by_the_shards_decontaminated_with_texts_through_ray(data, alone, cluster, tmp_path,
                                                                         monkeypatch, step):
    """A selection written by the shards (``-o DIR``), with decontamination where the texts are and texts
    attached, through Ray, an actor lost after each of its steps: the parts are the one file, row for row.
    Every logged array is spilled to the coordinator's scratch, so the replay reads them back from there."""
    import ray

    from nagindex.query import parts

    monkeypatch.setattr(parts, "MERGE_BATCH", 11)
    monkeypatch.setattr(fleet_mod, "SPILL_BYTES", 1)
    real, killed = fleet_mod.RayFleet._run, []

    def run(self, name, args):
        out = real(self, name, args)
        if name == step and not killed:
            _kill(ray, self.actors[1])
            killed.append(name)
        return out

    monkeypatch.setattr(fleet_mod.RayFleet, "_run", run)
    targets, options = _forms(data)["decontam"]
    res = query(targets, data["idx"], out=tmp_path / "sel", ray_address=cluster, **options)
    assert pq.read_table(tmp_path / "sel").sort_by("rank").equals(alone["decontam"])
    assert bool(killed) == (step is not None)
    one = query(targets, data["idx"], **options).contamination
    assert sorted(res.contamination.to_pylist(), key=str) == sorted(one.to_pylist(), key=str)


def test_the_replay_log_spills_its_arrays_and_reads_them_back(tmp_path, monkeypatch):
    """Arrays of a logged step (a shard's ranks: 8 bytes a selected row) live in a scratch file, not in the
    coordinator's memory; replay gives them back equal, and closing the log removes the file."""
    monkeypatch.setenv("NAGINDEX_SCRATCH", str(tmp_path))
    log = fleet_mod.ReplayLog(2)
    big = np.arange(fleet_mod.SPILL_BYTES, dtype=np.int64)  # 8x the threshold
    small = np.arange(3, dtype=np.int32)
    log.add(0, "write_chosen", (0, 5, big, "part-0", ["docid"], False, False))
    log.add(0, "exclude", ([big[::-1].copy(), small],))
    log.add(1, "combine", (1, small))
    held = [a for _, args in log._steps[0] for a in args]
    assert not any(isinstance(a, np.ndarray) and a.nbytes >= fleet_mod.SPILL_BYTES for a in held)
    assert not isinstance(held[-1][0], np.ndarray) and held[-1][1] is small  # inside a list, too
    (step0, args0), (step1, args1) = log.steps(0)
    assert step0 == "write_chosen" and args0[:2] == (0, 5) and args0[3:] == ("part-0", ["docid"], False, False)
    assert args0[2].dtype == np.int64 and np.array_equal(args0[2], big)
    assert step1 == "exclude" and np.array_equal(args1[0][0], big[::-1]) and args1[0][1] is small
    assert [(s, a) for s, a in log.steps(1)] == [("combine", (1, small))] and log.count(1) == 1
    spill = next(tmp_path.glob("nagindex-scratch-*/replay-*"))
    assert (spill / "shard-0.bin").stat().st_size == 2 * big.nbytes
    log.close()
    assert not spill.exists()
