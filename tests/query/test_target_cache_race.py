"""Two processes encoding the same new target at once share the target cache safely."""
from __future__ import annotations

import hashlib
import subprocess
import sys
import textwrap

import numpy as np

# Each child encodes the same texts into the same cache. Every rename of a temporary file waits
# until both children are about to rename theirs, so their writes overlap for certain.
_CHILD = textwrap.dedent("""
    import hashlib, os, sys, time
    from pathlib import Path
    barrier, index_dir, model = Path(sys.argv[1]), sys.argv[2], sys.argv[3]
    real_replace = os.replace
    def replace_together(src, dst):
        if ".tmp" in str(src):
            (barrier / str(os.getpid())).touch()
            deadline = time.time() + 60
            while len(list(barrier.iterdir())) < 2 and time.time() < deadline:
                time.sleep(0.01)
        return real_replace(src, dst)
    os.replace = replace_together
    from nagindex.query.target_nags import target_codes
    manifest = {"backbone": model, "weights_sha256": None, "neuron_type": "fwd_up", "num_layers": 4,
                "top_k": 8, "max_length": 64}
    texts = ["The sun is a star.", "Water boils at 100 degrees.", "Plants need light."]
    codes = target_codes(index_dir, manifest, texts, name="race", device="cpu")
    print(hashlib.sha256(codes.tobytes()).hexdigest())
""")


def test_two_processes_encode_the_same_target_at_once(golden_dir, tmp_path):
    script, barrier, index_dir = tmp_path / "child.py", tmp_path / "barrier", tmp_path / "idx"
    script.write_text(_CHILD)
    barrier.mkdir()
    args = [sys.executable, str(script), str(barrier), str(index_dir), str(golden_dir / "model")]
    procs = [subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outs = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [err[-1500:] for _, err in outs]
    assert len(list(barrier.iterdir())) == 2  # both really renamed at the same moment
    cached = list((index_dir / "targets").iterdir())
    assert len(cached) == 1 and cached[0].suffix == ".npy"  # one entry, no temporary file left
    digest = hashlib.sha256(np.load(cached[0], allow_pickle=False).tobytes()).hexdigest()
    assert [out.strip() for out, _ in outs] == [digest, digest]
