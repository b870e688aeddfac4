"""The CLI: fast help, user errors without tracebacks, model-free queries never import torch."""
from __future__ import annotations

import subprocess
import sys

from click.testing import CliRunner

from nagindex.cli import main

COMMANDS = ["extract", "ingest", "info", "import", "export", "query", "mix", "score", "cluster", "evaluate",
            "targets", "demo", "report"]


def test_help_lists_every_command_and_imports_nothing_heavy():
    code = ("import sys; from nagindex.cli import main\n"
            "for args in (['--help'], ['evaluate', '--help'], ['cluster', '--help']):\n"
            "    try:\n        main(args)\n    except SystemExit:\n        pass\n"
            "heavy = [m for m in ('torch', 'transformers', 'faiss', 'numba', 'lmdb', 'tokenizers', 'scipy')"
            " if m in sys.modules]\n"
            "print('HEAVY', heavy)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert "HEAVY []" in out
    for cmd in COMMANDS:
        assert f"\n  {cmd} " in out
    assert "nagindex evaluate --index idx --target arc_challenge" in out and "nagindex cluster --index idx/" in out


def test_every_command_has_an_example_in_its_help():
    runner = CliRunner()
    for cmd in COMMANDS:
        result = runner.invoke(main, [cmd, "--help"])
        assert result.exit_code == 0
        assert "nagindex " + cmd in result.output or cmd == "targets", cmd


def test_user_errors_are_one_line_without_traceback(tmp_path):
    runner = CliRunner()
    result = runner.invoke(main, ["ingest", str(tmp_path / "missing.jsonl"), "--index", str(tmp_path / "i")])
    assert result.exit_code == 1
    assert "Error: input path" in result.output and "does not exist" in result.output
    assert "Traceback" not in result.output
    result = runner.invoke(main, ["query", "--index", str(tmp_path), "--target", "arc_challenge"])
    assert result.exit_code == 2 and "give a quota" in result.output
    result = runner.invoke(main, ["targets", "show", "arc_chalenge"])
    assert result.exit_code == 1 and "arc_challenge" in result.output  # did-you-mean


def test_model_free_query_does_not_import_torch(golden_dir, tmp_path):
    from nagindex.ingest.interop import import_features

    idx = tmp_path / "idx"
    import_features([golden_dir / "features_fwd_up_only/pool/pool.jsonl"], idx, num_layers=4, top_k=8, width=256,
                    token_field="token_num", payload_paths=[golden_dir / "data/pool/pool.parquet"])
    feats = golden_dir / "features_fwd_up_only/target/target.jsonl"
    code = ("import sys; from nagindex.cli import main\n"
            f"try:\n    main(['query', '--index', {str(idx)!r}, '--target-features', {str(feats)!r}, '--k', '5',"
            f" '-o', {str(tmp_path / 'o.parquet')!r}])\nexcept SystemExit as e:\n    assert not e.code, e.code\n"
            "print('TORCH', 'torch' in sys.modules, 'transformers' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert "TORCH False False" in out.stdout, out.stderr[-2000:]
    assert (tmp_path / "o.parquet").is_file()
