"""The ``nagindex`` command: a thin click layer over the library functions.

Heavy libraries (torch, transformers, faiss, numba) are imported inside the
commands, so ``nagindex --help`` and model-free queries start fast. User
errors (``NagIndexError``) print one ``Error:`` line and exit 1, never a traceback.
"""
from __future__ import annotations

import functools
import logging
import os
import sys
from pathlib import Path
from typing import Any, Callable

import click

from nagindex import __version__
from nagindex.errors import NagIndexError

DEFAULT_INDEX = "idx"


def _user_errors(fn: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except NagIndexError as exc:
            raise click.ClickException(str(exc)) from None
        except KeyboardInterrupt:
            click.echo("interrupted: committed work is kept; run the same command again to resume", err=True)
            sys.exit(130)

    return wrapper


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="nagindex")
@click.option("-v", "--verbose", count=True, help="More log output (-vv for debug).")
def main(verbose: int) -> None:
    """Target-oriented pretraining data selection with Neuron-Activated Graphs (NAG).

    Encode a corpus once (`ingest`: one LLM pass), then select documents for any
    benchmark target or mixture of targets (`query`, `mix`) with no further LLM
    pass over the corpus.

    \b
      nagindex ingest corpus/                         # LLM pass, once, resumable
      nagindex query --target arc_challenge --k 1M    # no LLM pass over the corpus
      nagindex mix configs/mixtures/paper6.yaml -o mix.parquet
    """
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")  # our own bars report progress
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    level = logging.WARNING - 10 * verbose
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    for noisy in ("transformers", "huggingface_hub", "accelerate"):
        logging.getLogger(noisy).setLevel(max(level, logging.ERROR))


# ---------------------------------------------------------------- shared options
Decorator = Callable[[Callable[..., Any]], Callable[..., Any]]


def _stacked(opts: list[Decorator]) -> Decorator:
    """One decorator applying click ``opts`` in order (the first one listed first in ``--help``)."""

    def apply(fn: Callable[..., Any]) -> Callable[..., Any]:
        for opt in reversed(opts):
            fn = opt(fn)
        return fn

    return apply


def _extraction_options(multi_type: bool) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """The flags shared by `extract` and `ingest` (backbone, K, max_length, device...)."""
    type_opt = (click.option("--neuron-types", default="fwd_up", show_default=True,
                             help="Comma-separated: fwd_up, fwd_down, att_q, att_k, att_v, att_o.")
                if multi_type else
                click.option("--neuron-type", default="fwd_up", show_default=True,
                             type=click.Choice(["fwd_up", "fwd_down", "att_q", "att_k", "att_v", "att_o"]),
                             help="One neuron type per index (fwd_up is the paper's best)."))
    opts = [
        click.option("--backbone", default="smollm2-135m", show_default=True,
                     help="Built-in name (smollm2-135m, embedded), HF hub id (Qwen/Qwen3-1.7B-Base) or local folder."),
        type_opt,
        click.option("--top-k", default=20, show_default=True, help="Neurons kept per layer (paper: 20 for width 6144)."),
        click.option("--max-length", default=120, show_default=True, help="Tokens per document fed to the model."),
        click.option("--batch-size", default=32, show_default=True, help="Documents per forward pass."),
        click.option("--text-field", default="auto", show_default=True,
                     help="Field holding the document text (auto: doc, else text, else content)."),
        click.option("--id-field", default="auto", show_default=True,
                     help="Field holding the document id (auto: docid, else id, doc_id, _id, uuid; "
                          "none of them: <file>:<line>)."),
        click.option("--text-template", default=None, metavar="TEMPLATE",
                     help="Make each record's text with this Jinja template, its fields as variables, instead of "
                          "--text-field: '{{ instruction }} {{ output }}', or @FILE to read it from a file. Runs in "
                          "the target registry's sandbox; a record it fails on is skipped (ingest) or an error "
                          "(extract). In an index it is part of the identity: appends must give the same one."),
        click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda or cuda:N."),
        click.option("--dtype", default=None, help="float32 (CPU default), bfloat16 (CUDA default), float16."),
        click.option("--trust-remote-code", is_flag=True, help="Allow a hub model to run its own code (off by default)."),
    ]

    return _stacked(opts)


def _load_text_template(kw: dict[str, Any]) -> None:
    """``--text-template`` read (``@FILE``) in place, refused beside an explicit ``--text-field``."""
    from click.core import ParameterSource

    from nagindex.sources.render import load_text_template

    if kw["text_template"] is not None:
        if click.get_current_context().get_parameter_source("text_field") == ParameterSource.COMMANDLINE:
            raise click.UsageError("--text-field and --text-template exclude each other: the template makes the text")
        kw["text_template"] = load_text_template(kw["text_template"])


# ---------------------------------------------------------------- ingest side
@main.command()
@click.argument("inputs", nargs=-1, required=True, type=click.Path())
@click.option("-o", "--output", "out", required=True, type=click.Path(), help="Feature JSONL to write.")
@_extraction_options(multi_type=True)
@_user_errors
def extract(inputs: tuple[str, ...], out: str, neuron_types: str, **kw: Any) -> None:
    """Write NAG features of INPUTS (parquet/jsonl files or folders) in the reference's JSONL format.

    One line per document in input order:
    {"docid": ..., "fwd_up_feature": {"layer_topk_value_index": [L*K ints]}}.
    Any bad record (an empty document, or one --text-template fails on,
    included) is an error naming it.

    \b
      nagindex extract pool.parquet -o pool_features.jsonl --top-k 20
      nagindex extract alpaca.jsonl -o alpaca_features.jsonl --text-template @alpaca.j2
    """
    from nagindex.encode.extract import parse_neuron_types
    from nagindex.ingest.run import extract_files

    _load_text_template(kw)
    n = extract_files(inputs, out, neuron_types=parse_neuron_types(neuron_types), **kw)
    click.echo(f"wrote {n} documents to {out}")


@main.command()
@click.argument("inputs", nargs=-1, required=True, type=click.Path())
@click.option("--index", "index_dir", default=DEFAULT_INDEX, show_default=True, type=click.Path(),
              help="Index directory (created if absent; new inputs are appended).")
@_extraction_options(multi_type=False)
@click.option("--token-field", default=None, help="Take each doc's token count from this field instead of counting.")
@click.option("--limit", type=int, default=None, help="Stop after this many new documents.")
@click.option("--commit-every", default=512, show_default=True, help="Documents per atomic commit.")
@click.option("--strict", is_flag=True, help="Stop at the first bad record instead of skipping it.")
@click.option("--ray-address", default=None,
              help="Extract on Ray actors: 'auto' joins the running cluster, 'local' starts one here, or ray://host:port.")
@click.option("--ray-workers", default=2, show_default=True, help="Ray encode actors (each loads the backbone once).")
@click.option("--shards", type=click.IntRange(min=1), default=1, show_default=True,
              help="Write a sharded index: one worker per shard, each owning whole inputs or parts of big ones "
                   "(--split-size) (local processes, or Ray tasks with --ray-address). An index keeps its shard "
                   "count; appends leave it out.")
@click.option("--shard-root", type=click.Path(file_okay=False), default=None,
              help="Put the shards under this folder (a node's local disk) instead of inside --index.")
@click.option("--workers", type=click.IntRange(min=1), default=None,
              help="Local shard worker processes (one model each) running at once [default: as many as the "
                   "cores and available memory allow, at most one per shard].")
@click.option("--split-size", default="64MiB", show_default=True,
              help="Sharded ingests: split a new input bigger than this (.parquet by row groups, uncompressed "
                   ".jsonl by byte ranges at line starts) so that the shard workers share it; positions stay "
                   "the whole file's. .jsonl.gz, .jsonl.zst and remote .jsonl are read whole.")
@click.option("--ray-gpus-per-worker", type=float, default=None,
              help="GPUs per actor [default: 1 when the cluster has a GPU per worker, else 0].")
@click.option("--features", default="nag", show_default=True,
              help="nag, or nag,nait: also store each document's dense activations (L x d in the index's "
                   "dtype) for --method nait (README, NAIT).")
@click.option("--nait-site", type=click.Choice(["residual", "mlp"]), default="residual", show_default=True,
              help="NAIT's activation: the decoder block's output (residual stream) or its MLP's output.")
@click.option("--nait-vector", type=click.Choice(["last", "delta"]), default="last", show_default=True,
              help="Per layer and document: the last token's activation, or last minus first token's.")
@click.option("--nait-dims", type=click.IntRange(min=1), default=None,
              help="Store a seeded random projection to this many values per layer instead of the full width "
                   "(README, NAIT: rank agreement with exact scores).")
@click.option("--nait-seed", type=int, default=0, show_default=True, help="Seed of the --nait-dims projection.")
@_user_errors
def ingest(inputs: tuple[str, ...], index_dir: str, **kw: Any) -> None:
    """Encode INPUTS once into the index: one LLM pass, resumable, safe with bad input.

    INPUTS: files or folders of .jsonl, .jsonl.gz, .jsonl.zst, .parquet, .txt (one
    document per file) and HF save_to_disk folders, or URLs of the same files
    on the Hugging Face Hub (hf://datasets/...) or any fsspec store (s3://...),
    streamed. Re-running adds nothing; Ctrl-C or kill, then the same command,
    resumes where it stopped. Bad records are skipped, counted, and listed in
    INDEX/rejects.jsonl.

    \b
      nagindex ingest corpus/
      nagindex ingest shard1.parquet shard2.jsonl.zst --index idx/ --text-field text
      nagindex ingest 'hf://datasets/tiiuae/falcon-refinedweb/data/*.parquet' --id-field url
      nagindex ingest alpaca.jsonl --text-template @alpaca.j2          # records that are not one text field
      nagindex ingest corpus/ --index idx --shards 8                  # 8 shards, a worker process each
      nagindex ingest corpus/ --index idx --shards 8 --workers 2      # at most 2 at once
      nagindex ingest corpus/ --index idx --shards 64 --ray-address auto --device cuda
    """
    from nagindex.encode.dense import parse_features
    from nagindex.ingest.run import ingest as run_ingest

    _load_text_template(kw)
    kw["nait"] = parse_features(kw.pop("features"), kw.pop("nait_site"), kw.pop("nait_vector"), kw.pop("nait_dims"),
                                kw.pop("nait_seed"))
    res = run_ingest(inputs, index_dir, **kw)
    click.echo(f"{index_dir}: +{res.added:,} documents (+{res.tokens:,} tokens), {res.rows:,} in total; "
               f"{res.rejects:,} skipped" + (" (" + ", ".join(f"{k}: {v:,}" for k, v in sorted(
                   res.reject_reasons.items(), key=lambda kv: -kv[1])) + ")" if res.reject_reasons else "")
               + (f"; {res.skipped_inputs} input(s) already ingested" if res.skipped_inputs else "")
               + (f"; {res.hidden:,} repeated id(s) across shards left out" if res.hidden else ""))
    if res.fields:
        click.echo("fields: " + "; ".join(f"{kind} from " + ", ".join(
            f"{name!r}" if len(used) == 1 else f"{name!r} ({n:,})" for name, n in used.items())
            for kind, used in res.fields.items()))
    for warning in res.warnings:
        click.echo(f"warning: {warning}", err=True)
    if res.rejects:
        click.echo(f"skipped records: {index_dir}/rejects.jsonl")
    click.echo(f"time: {res.timings}", err=True)


@main.command()
@click.option("--index", "index_dir", default=DEFAULT_INDEX, show_default=True, type=click.Path(exists=True))
@click.option("--derive", is_flag=True,
              help="First rebuild the derived files (arrays, fingerprints, pool counts) from the store where "
                   "they are missing, short or behind: after copying an index's store alone, or losing a file.")
@_user_errors
def info(index_dir: str, derive: bool) -> None:
    """Print an index's manifest, counts, tokens and sizes on disk.

    \b
      nagindex info --index idx/
      nagindex info --index idx/ --derive     # rebuild lost derived files first
    """
    from nagindex.index.info import describe_index

    if derive:
        from nagindex.index.derived import derive_index

        for done in derive_index(index_dir):
            click.echo(f"derived {done['derived_new_rows']:,} rows ({done['rows']:,} in all) "
                       f"in {done['build_seconds']:.1f} s", err=True)
    click.echo(describe_index(index_dir))


@main.command()
@click.option("--index", "index_dir", default=DEFAULT_INDEX, show_default=True, type=click.Path(exists=True))
@click.option("--move", "moves", nargs=2, multiple=True, metavar="OLD NEW",
              help="Re-attach the sources at OLD (a file, or a folder above files) where they are now, NEW; "
                   "every indexed record is checked by docid at its position first.  Repeatable.")
@click.option("--move-file", type=click.Path(exists=True, dir_okay=False), default=None,
              help="YAML/JSON mapping OLD: NEW, the same as --move for each entry.")
@_user_errors
def sources(index_dir: str, moves: tuple[tuple[str, str], ...], move_file: str | None) -> None:
    """List an index's sources and whether each is still the file ingested; re-attach moved or copied ones.

    Texts (--with-text, decontamination) are read back from the sources, and only when provably the
    indexed documents. After a corpus is moved or copied, re-attach it instead of ingesting it again:
    each new file is read once and must hold every indexed record, with its docid, at its position.

    \b
      nagindex sources --index idx/
      nagindex sources --index idx/ --move /data/corpus /mnt/big/corpus
    """
    from nagindex.ingest.relocate import STATES, load_moves, reattach_sources, source_states

    if moves or move_file:
        mapping = {**(load_moves(move_file) if move_file else {}), **dict(moves)}
        for r in reattach_sources(index_dir, mapping):
            resized = "; its size differs from the ingested file's (its records match)" if r.resized else ""
            click.echo(f"re-attached {r.old} -> {r.new} ({r.documents:,} records checked{resized})")
        return
    states = source_states(index_dir)
    for source in states:
        click.echo(f"{source.state:<10} {source.documents:>12,}  {source.path}")
    counts = {state: sum(source.state == state for source in states) for state in STATES}
    click.echo(f"{len(states):,} source{'s' if len(states) != 1 else ''}: " + ", ".join(f"{n:,} {state}" for state, n in counts.items() if n))
    if counts["missing"] or counts["changed"]:
        click.echo(f"texts cannot be read back from missing or changed sources; if they moved or were copied, "
                   f"re-attach them: nagindex sources --index {index_dir} --move OLD NEW", err=True)


@main.command(name="import")
@click.argument("features", nargs=-1, required=True, type=click.Path())
@click.option("--index", "index_dir", default=DEFAULT_INDEX, show_default=True, type=click.Path())
@click.option("--num-layers", type=int, required=True, help="L of the features.")
@click.option("--top-k", type=int, required=True, help="K of the features.")
@click.option("--width", type=int, required=True, help="Layer width N (neuron indices are < N).")
@click.option("--neuron-type", default="fwd_up", show_default=True)
@click.option("--token-field", default=None, help="Token counts: this field of the feature (or payload) files.")
@click.option("--payload", "payload", multiple=True, type=click.Path(exists=True),
              help="jsonl/parquet files with the id field and --token-field (repeatable).")
@click.option("--id-field", default="docid", show_default=True)
@click.option("--backbone", default=None, help="Record the backbone the features came from (enables target extraction).")
@click.option("--max-length", type=int, default=None, help="Record the max_length the features used.")
@click.option("--shards", type=click.IntRange(min=1), default=1, show_default=True,
              help="Write a sharded index split like `ingest --shards`: whole files per shard (the least loaded "
                   "by bytes), so one big file makes one busy shard; split it into files first. An index keeps "
                   "its shard count; appends leave it out.")
@click.option("--shard-root", type=click.Path(file_okay=False), default=None,
              help="Put the shards under this folder (a node's local disk) instead of inside --index.")
@_user_errors
def import_(features: tuple[str, ...], index_dir: str, payload: tuple[str, ...], **kw: Any) -> None:
    """Build an index from reference-format FEATURES (jsonl or parquet), no LLM needed.

    \b
      nagindex import pool.jsonl --index idx/ --num-layers 28 --top-k 20 --width 6144 \\
          --token-field token_num --payload pool.parquet
      nagindex import features/ --index idx/ --shards 8 --num-layers 28 --top-k 20 --width 6144 \\
          --token-field token_num
    """
    from nagindex.ingest.interop import import_features

    res = import_features(features, index_dir, payload_paths=list(payload) or None, **kw)
    hidden = f" ({res['hidden']:,} repeats of an id in an earlier file of another shard hidden)" \
        if res["hidden"] else ""
    click.echo(f"{index_dir}: +{res['added']:,} documents{hidden}, {res['rejects']:,} skipped, "
               f"{res['seconds']:.1f}s")


@main.command()
@click.option("--index", "index_dir", default=DEFAULT_INDEX, show_default=True, type=click.Path(exists=True))
@click.option("-o", "--output", "out", required=True, type=click.Path(), help="Feature JSONL to write.")
@_user_errors
def export(index_dir: str, out: str) -> None:
    """Write the index's NAGs back in the reference's feature JSONL format.

    \b
      nagindex export --index idx/ -o features.jsonl
    """
    from nagindex.ingest.interop import export_features

    n = export_features(index_dir, out)
    click.echo(f"wrote {n:,} documents to {out}")


# ---------------------------------------------------------------- targets
@main.group()
def targets() -> None:
    """The benchmark targets registry (configs/targets/*.yaml)."""


@targets.command(name="list")
@_user_errors
def targets_list() -> None:
    """List the registered targets and their sources in order of preference.

    \b
      nagindex targets list
    """
    from nagindex.query.target import list_targets

    for spec in list_targets():
        sources = ", ".join(s.label() for s in spec.sources)
        click.echo(f"{spec.name:<14} {spec.description}\n{'':<14} sources: {sources}")


@targets.command(name="show")
@click.argument("name", required=False)
@click.option("--target-file", "file", default=None, type=click.Path(exists=True),
              help="A file of examples instead of NAME: jsonl/parquet (a doc or text field), txt or a target YAML.")
@click.option("--target-filter", "filters", multiple=True, help="COL=VALUE row filter for --target-file.")
@click.option("-n", "--examples", default=3, show_default=True, help="How many example texts to print.")
@click.option("--method", type=click.Choice(["nag", "nait"]), default="nag", show_default=True,
              help="nait: print the target's NAIT directions in --index instead (computed once, cached).")
@click.option("--index", "index_dir", default=DEFAULT_INDEX, show_default=True, type=click.Path(),
              help="--method nait: the index (ingested with --features nag,nait) whose directions to show.")
@_user_errors
def targets_show(name: str | None, file: str | None, filters: tuple[str, ...], examples: int, method: str,
                 index_dir: str) -> None:
    """Load target NAME (or the examples of --target-file) here and print its size, the source used and a few
    example texts.

    \b
      nagindex targets show arc_challenge
      nagindex targets show arc_challenge --method nait --index it-idx
      nagindex targets show --target-file math.jsonl --method nait --index it-idx
    """
    from nagindex.query.request import parse_target
    from nagindex.query.target import load_examples

    if (name is None) == (file is None):
        raise click.UsageError("give one target: NAME or --target-file FILE")
    if filters and file is None:
        raise click.UsageError("--target-filter applies to --target-file")
    target = parse_target(name) if name is not None else parse_target(file, "file", filters)
    if method == "nait":
        from nagindex.query.nait import describe_directions

        for line in describe_directions(target, index_dir):
            click.echo(line)
        return
    ts = load_examples(target)
    click.echo(f"{ts.name}: {len(ts.texts):,} examples from {ts.source} (split {ts.split})")
    if ts.note:
        click.echo(f"note: {ts.note}")
    for text in ts.texts[:examples]:
        click.echo("---\n" + text)


@targets.command(name="validate")
@_user_errors
def targets_validate() -> None:
    """Render every registered target against its real rows; report the ones that cannot load here.

    \b
      nagindex targets validate
    """
    from nagindex.query.target import SourceUnavailableError, list_targets, load_spec

    failed = 0
    logging.getLogger("nagindex.query.target").setLevel(logging.ERROR)  # eval-split notes: see `targets show`
    for spec in list_targets():
        try:
            ts = load_spec(spec)
            click.echo(f"ok       {spec.name:<14} {len(ts.texts):>7,} examples  {ts.source}")
        except SourceUnavailableError as exc:
            click.echo(f"offline  {spec.name:<14} {str(exc).splitlines()[-1]}")
        except NagIndexError as exc:
            failed += 1
            click.echo(f"BROKEN   {spec.name:<14} {exc}")
    if failed:
        raise click.ClickException(f"{failed} target config(s) are broken")


# ---------------------------------------------------------------- query side
def _selection_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    opts = [
        click.option("--index", "index_dir", default=DEFAULT_INDEX, show_default=True, type=click.Path(exists=True)),
        click.option("-o", "--output", "out", type=click.Path(),
                     help="Selection file, .parquet or .jsonl [default: <target>.parquet]; a folder name (no "
                          "suffix): each shard writes its part of the selection there (for large selections)."),
        click.option("--layers", default=None, help="Layers to score: all (default), last, first, or a list like 0,5,-1."),
        click.option("--power", default=1.0, show_default=True, help="Profile weights c^p / sum c^p."),
        click.option("--weighting", type=click.Choice(["none", "lift", "idf"]), default="none", show_default=True,
                     help="Weigh each profile neuron by its specificity to the target: none (the paper's score), "
                          "lift (its frequency in the target over its frequency in the pool) or idf (the pool's "
                          "inverse document frequency); README, \"Weighting\"."),
        click.option("--method", type=click.Choice(["nag", "nait"]), default="nag", show_default=True,
                     help="nag: the NAG profile score; nait: each target a direction per layer, documents scored "
                          "by their dense activations (an index ingested with --features nag,nait; README, NAIT)."),
        click.option("--quality-file", type=click.Path(exists=True), help="parquet/jsonl with docid and a quality column."),
        click.option("--quality-col", help="The quality column of --quality-file."),
        click.option("--invert-quality", is_flag=True,
                     help="Higher quality is better: use 1 - normalised quality (spec sec. 4)."),
        click.option("--with-text", is_flag=True, help="Add each document's text, read back from its source."),
        click.option("--max-examples", type=click.IntRange(min=1), default=None,
                     help="Profile a random sample of this many examples per target (200 suffice: paper "
                          "Sec. 4.1) [default: all].  Ignored for --target-features."),
        click.option("--example-seed", type=int, default=0, show_default=True,
                     help="Seed of the --max-examples sample (recorded in the manifest)."),
        click.option("--device", default="auto", show_default=True,
                     help="For encoding new target examples; cuda or cuda:N also scores the index on that GPU "
                          "(same selection as the CPU).  auto scores on the CPU."),
        click.option("--decontaminate/--no-decontaminate", default=None,
                     help="Leave out every document sharing a --ngram word run with the target benchmark's "
                          "evaluation data (every split readable here, offline test splits included) [default: on "
                          "for registered targets].  Removed documents are listed in <out>.contamination.parquet."),
        click.option("--decontaminate-against", default=None, metavar="NAME[,NAME...]",
                     help="Also decontaminate against these registered benchmarks (for --target-file too)."),
        click.option("--ngram", type=click.IntRange(min=1), default=13, show_default=True,
                     help="Words in a shared run that make a document contaminated (lm-eval / GPT-3: 13)."),
        click.option("--group-by", default=None, metavar="source|docid-prefix|COLUMN",
                     help="Cap groups: the input file, the docid before its last '-', or a column of --group-file."),
        click.option("--group-file", type=click.Path(exists=True), default=None,
                     help="parquet/jsonl with docid and the --group-by column [default: --quality-file]."),
        click.option("--max-group-share", type=float, default=None,
                     help="No group takes more than this share of a target's tokens (documents with --k)."),
        click.option("--group-quota", type=click.Path(exists=True), default=None,
                     help="YAML/JSON mapping group -> its own maximum share."),
        click.option("--one-per-cluster", is_flag=True,
                     help="Keep only the best-ranked document of each near-duplicate cluster (run `nagindex "
                          "cluster` once first); the budget is still met from the next documents."),
        click.option("--sample", is_flag=True,
                     help="Soft selection: draw documents without replacement with probability ~ exp(z / T), z the "
                          "score standardised over the pool (Gumbel-top-k), instead of taking the top ranks."),
        click.option("--temperature", type=float, default=1.0, show_default=True,
                     help="--sample: T in pool standard deviations (0.1: close to the ranking; 10: close to uniform)."),
        click.option("--seed", type=int, default=0, show_default=True, help="--sample: the same seed, the same selection."),
        click.option("--ray-address", default=None,
                     help="Score each shard in its own Ray actor, on the node the catalog records for it: 'auto' "
                          "joins the running cluster, 'local' starts one here, or ray://host:port.  Actors stay "
                          "warm between queries (NAGINDEX_ACTOR_IDLE seconds, default 900)."),
    ]
    for opt in reversed(opts):
        fn = opt(fn)
    return fn


def _echo_result(res: Any) -> None:
    from nagindex.units import format_count

    for note in res.notes:
        click.echo(f"note: {note}", err=True)
    sim = res.table.column("score").to_numpy() if res.table is not None else []  # None: written by the shards
    span = f", score {sim.min():.4f}..{sim.max():.4f}" if len(sim) else ""
    click.echo(f"selected {len(res):,} of {res.pool_docs:,} documents, {format_count(res.tokens)} of "
               f"{format_count(res.pool_tokens)} tokens{span}" + (f" -> {res.out}" if res.out else ""))
    click.echo(f"time: {res.timings}", err=True)


def _target_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    opts = [
        click.option("--target", "names", multiple=True, help="Registered target NAME[:weight] (repeatable)."),
        click.option("--target-file", "files", multiple=True, type=click.Path(exists=True),
                     help="Target examples: jsonl/parquet (a doc or text field) or txt, [:weight] allowed "
                          "(repeatable)."),
        click.option("--target-filter", "filters", multiple=True, help="COL=VALUE row filter for --target-file."),
        click.option("--target-features", "features", multiple=True, type=click.Path(exists=True),
                     help="Reference-format features of target docs (no backbone needed)."),
    ]
    return _stacked(opts)(fn)


def _one_target_options(verb: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """`--target NAME` or `--target-file` (with `--target-filter`): the one target of `evaluate` and `explain`."""
    opts = [
        click.option("--target", "name", default=None, help=f"Registered target NAME {verb}."),
        click.option("--target-file", "file", default=None, type=click.Path(exists=True),
                     help="Target examples instead: jsonl/parquet (a doc or text field), txt or a target YAML."),
        click.option("--target-filter", "filters", multiple=True, help="COL=VALUE row filter for --target-file."),
    ]

    return _stacked(opts)


def _targets(names: tuple[str, ...], files: tuple[str, ...], filters: tuple[str, ...],
             features: tuple[str, ...]) -> list[Any]:
    from nagindex.query.request import parse_target

    if filters and not files:
        raise click.UsageError("--target-filter applies to --target-file")
    return ([parse_target(n) for n in names] + [parse_target(f, "file", filters) for f in files]
            + [parse_target(f, "features") for f in features])


@main.command()
@_target_options
@click.option("--k", "k", default=None, help="Select the top N documents (1000, 50K, 1M).")
@click.option("--fraction", type=float, default=None, help="Token budget: this fraction of the index's tokens.")
@click.option("--tokens", default=None, help="Token budget (500M, 30B).")
@click.option("--mode", type=click.Choice(["paper", "union"]), default="paper", show_default=True,
              help="Several targets: paper = each its share, concatenated; union = turns, no duplicates.")
@click.option("--dedup", is_flag=True, help="paper mode: drop repeated docids, keeping the first.")
@click.option("--approx", is_flag=True, help="Score only FAISS binary candidates (with --k).")
@_selection_options
@_user_errors
def query(names: tuple[str, ...], files: tuple[str, ...], filters: tuple[str, ...], features: tuple[str, ...],
          k: str | None, tokens: str | None, out: str | None, **kw: Any) -> None:
    """Select the documents of the index closest to one or more targets. No LLM pass over the corpus.

    Give one quota: --k, --fraction or --tokens. A target seen for the first time
    is encoded once with the index's backbone (its examples only) and cached.

    \b
      nagindex query --target arc_challenge --k 1M
      nagindex query --index idx/ --target arc_challenge:2 --target mmlu --fraction 0.2 -o mix.parquet
      nagindex query --target-file mine.parquet --target-filter dataset=chem --tokens 30B
    """
    from nagindex.query.run import default_output, query as run_query
    from nagindex.units import parse_count

    targets = _targets(names, files, filters, features)
    if out is None:
        out = default_output(targets)
    k_n = parse_count(k) if k is not None else None
    if k is None and tokens is None and kw.get("fraction") is None:
        raise click.UsageError("give a quota: --k N, --fraction F or --tokens N")
    res = run_query(targets, k=k_n, tokens=parse_count(tokens) if tokens else None, out=out, **kw)
    _echo_result(res)


@main.command()
@click.option("--index", "index_dir", default=DEFAULT_INDEX, show_default=True, type=click.Path(exists=True))
@click.option("--radius", type=click.IntRange(0, 4095), default=None,
              help="Hamming radius in fingerprint bits (of 4096; a SmolLM2-135M NAG sets about 560) [default: 100, or the "
                   "radius of the stored clusters].")
@click.option("--method", type=click.Choice(["multihash", "flat"]), default="multihash", show_default=True,
              help="multihash: multi-index hashing on 64-bit chunks (a sort join), finds every pair within 63 "
                   "bits and most beyond; flat: exhaustive FAISS range search, every pair at any radius, "
                   "quadratic in documents.")
@click.option("--workers", type=click.IntRange(1), default=1, show_default=True,
              help="Processes (Ray tasks with --ray-address) sharing multihash's 64 chunk columns; the "
                   "clusters are the same.")
@click.option("--ray-address", default=None,
              help="Run multihash's chunk tasks on Ray: 'auto' joins the running cluster, 'local' starts one "
                   "here, or ray://host:port (its nodes must see the index folder).")
@_user_errors
def cluster(index_dir: str, radius: int | None, method: str, workers: int, ray_address: str | None) -> None:
    """Group near-duplicate documents by their fingerprints, once; stored with the index.

    Two documents are near-duplicates when their fingerprints differ in at most --radius bits;
    clusters are the connected groups. Queries with --one-per-cluster then keep the
    best-ranked document of each. After more documents are ingested, run it again: it
    searches only the new ones.

    \b
      nagindex cluster --index idx/
      nagindex cluster --index idx/ --workers 8
      nagindex query --index idx/ --target arc_challenge --fraction 0.2 --one-per-cluster
    """
    from nagindex.index.clusters import DEFAULT_RADIUS, build_clusters, read_cluster_info

    stored = read_cluster_info(index_dir)
    if radius is None:
        radius = stored["radius"] if stored is not None else DEFAULT_RADIUS
    res = build_clusters(index_dir, radius=radius, method=method, show_progress=True, workers=workers,
                         ray_address=ray_address)
    click.echo(f"{res.clusters:,} clusters holding {res.clustered_rows:,} of {res.rows:,} documents "
               f"(radius {res.radius}, {res.method}; {res.searched:,} documents searched, {res.pairs:,} pairs, "
               f"{res.seconds:.1f}s)")


@main.command()
@click.argument("mixture", type=click.Path(exists=True))
@_selection_options
@_user_errors
def mix(mixture: str, out: str | None, **kw: Any) -> None:
    """Select for a MIXTURE YAML of several targets, all scored in one pass over the index.

    \b
      nagindex mix --index idx/ configs/mixtures/paper6.yaml -o mix.parquet

    The YAML gives mode (paper|union), one quota (fraction, k or tokens: the total
    over all targets) and targets (name, file or features, with weight and filter).
    """
    from nagindex.query.mixture import load_mixture
    from nagindex.query.run import default_output, mix as run_mix

    m = load_mixture(mixture)
    if out is None:
        out = default_output(m.targets, Path(mixture).stem)
    res = run_mix(m, out=out, **kw)
    _echo_result(res)


@main.command()
@_target_options
@click.option("--index", "index_dir", default=DEFAULT_INDEX, show_default=True, type=click.Path(exists=True))
@click.option("-o", "--output", "out", required=True, type=click.Path(),
              help="scores.parquet or scores.jsonl: docid, token_count, score_<target> per target.")
@click.option("--layers", default=None, help="Layers to score: all (default), last, first, or a list like 0,5,-1.")
@click.option("--power", default=1.0, show_default=True, help="Profile weights c^p / sum c^p.")
@click.option("--weighting", type=click.Choice(["none", "lift", "idf"]), default="none", show_default=True,
              help="Weigh each profile neuron by its specificity to the target: none (the paper's score), "
                   "lift (its frequency in the target over its frequency in the pool) or idf (the pool's "
                   "inverse document frequency); README, \"Weighting\".")
@click.option("--max-examples", type=click.IntRange(min=1), default=None,
              help="Profile a random sample of this many examples per target [default: all].")
@click.option("--example-seed", type=int, default=0, show_default=True, help="Seed of the --max-examples sample.")
@click.option("--device", default="auto", show_default=True,
              help="For encoding new target examples; cuda or cuda:N also scores on that GPU.")
@click.option("--method", type=click.Choice(["nag", "nait"]), default="nag", show_default=True,
              help="nag: the NAG similarity; nait: NAIT's score (an index ingested with --features nag,nait).")
@_user_errors
def score(names: tuple[str, ...], files: tuple[str, ...], filters: tuple[str, ...], features: tuple[str, ...],
          **kw: Any) -> None:
    """Write the score of EVERY document of the index for one or more targets (no selection).

    For sampling or mixing in your own tools: one row per document, shard by shard in
    index order, streamed (memory stays one block).

    \b
      nagindex score --target arc_challenge --target mmlu -o scores.parquet
    """
    from nagindex.query.export import score_all

    res = score_all(_targets(names, files, filters, features), **kw)
    click.echo(f"scored {res.rows:,} documents against {', '.join(res.targets)} -> {res.out}")
    click.echo(f"time: {res.timings}", err=True)


@main.command(name="write-training")
@click.argument("selection", type=click.Path(exists=True, dir_okay=False))
@click.option("-o", "--output", "out", required=True, type=click.Path(file_okay=False),
              help="Folder for the parts and their manifest.json.")
@click.option("--index", "index_dir", default=None, type=click.Path(exists=True),
              help="The index the selection was made from [default: the one its manifest names].")
@click.option("--format", "format", type=click.Choice(["parquet", "jsonl.zst", "megatron"]), default="parquet",
              show_default=True, help="Texts (docid, text, rank), or Megatron-LM .bin/.idx token ids.")
@click.option("--shard-size", default="512MB", show_default=True,
              help="Bytes per part: UTF-8 text, or token ids for megatron (512MB, 1GB, 64KiB).")
@click.option("--tokenizer", default="smollm2-135m", show_default=True,
              help="megatron: a built-in backbone name (offline), a local HF folder or a hub id.")
@click.option("--no-eos", "eos", flag_value=False, default=True, help="megatron: no end token after each document.")
@click.option("--workers", type=click.IntRange(min=1), default=1, show_default=True,
              help="Local worker processes (a group of sources each).")
@click.option("--ray-address", default=None,
              help="Write on Ray tasks instead: 'auto', 'local' or host:port (sources and -o on shared storage).")
@_user_errors
def write_training(selection: str, **kw: Any) -> None:
    """Write the documents of a SELECTION (from `query` or `mix`) as training shards.

    Texts are read back from the sources and checked as --with-text checks them; each
    worker reads only its own sources, streaming. Kill it, run it again: it resumes.

    \b
      nagindex write-training arc.parquet -o train/ --format jsonl.zst --shard-size 1GB
      nagindex write-training arc.parquet -o megatron/ --format megatron --workers 8
    """
    from nagindex.export.training import write_training as run_write

    res = run_write(selection, **kw)
    click.echo(f"{res.documents:,} documents, {res.bytes:,} bytes in {len(res.parts)} part(s) -> {res.out}"
               + (f" ({res.skipped_tasks} task(s) already written)" if res.skipped_tasks else ""))
    click.echo(f"time: {res.timings}", err=True)


# ---------------------------------------------------------------- evaluate
@main.command()
@click.argument("selections", nargs=-1, required=True, type=click.Path(exists=True, dir_okay=False))
@click.option("--index", "index_dir", default=DEFAULT_INDEX, show_default=True, type=click.Path(exists=True),
              help="The index the selections name documents of.")
@_one_target_options("to evaluate toward")
@click.option("--seeds", default=3, show_default=True, type=click.IntRange(min=1),
              help="Proxy models per arm (seeds 0..N-1); intervals are over seeds.")
@click.option("--tokens", default=None,
              help="Tokens each proxy model trains on (proxy vocabulary) [default: as many as the smallest arm holds].")
@click.option("--heldout", default=500, show_default=True, type=click.IntRange(min=1),
              help="Held-out target examples measured (a seeded sample of those no profile used).")
@click.option("--split-seed", default=0, show_default=True, help="Seed of the held-out sample.")
@click.option("--threads", type=click.IntRange(min=1), default=None, help="CPU threads for torch [default: all].")
@click.option("--device", default="auto", show_default=True, help="For encoding the held-out examples' NAGs.")
@click.option("--weighting", type=click.Choice(["none", "lift", "idf"]), default="none", show_default=True,
              help="The NAG similarity column's scoring, as the query's --weighting.")
@click.option("--method", type=click.Choice(["nag", "nait"]), default="nag", show_default=True,
              help="The training-free score column: NAG similarity, or the NAIT score (index ingested with "
                   "--features nag,nait).")
@click.option("--json", "json_out", default=None, type=click.Path(), help="Write the results as JSON here.")
@click.option("--report", default=None, type=click.Path(), help="Write an HTML page with plots here.")
@_user_errors
def evaluate(selections: tuple[str, ...], name: str | None, file: str | None, filters: tuple[str, ...],
             tokens: str | None, **kw: Any) -> None:
    """Does a selection help? Compare SELECTION files (a `docid` column: `query`/`mix` outputs or any
    list of the index's docids) with a random selection of the same size, on held-out target examples.

    \b
      nagindex evaluate --index idx --target arc_challenge arc.parquet minilm.parquet --json eval.json
      nagindex evaluate --index it-idx --target-file math.jsonl math.parquet --method nait

    Per arm: DSIR's KL reduction and the NAG similarity (training-free), then a tiny GPT trained from
    scratch per seed on the same number of its tokens: held-out bits per byte (and, for multiple-choice
    targets, the gold answer's log-probability and accuracy), with the paired difference to random and
    its 95% interval over seeds. Examples a selection's profile used (its manifest) are never measured.
    """
    from nagindex.evaluate.run import evaluate as run_evaluate
    from nagindex.query.request import parse_target
    from nagindex.units import parse_count

    if (name is None) == (file is None):
        raise click.UsageError("give one target: --target NAME or --target-file FILE")
    if filters and file is None:
        raise click.UsageError("--target-filter applies to --target-file")
    target = parse_target(name) if name is not None else parse_target(file, "file", filters)
    res = run_evaluate(list(selections), target=target, tokens=parse_count(tokens) if tokens else None, **kw)
    click.echo(res.table())
    for path in (res.json_out, res.report):
        if path is not None:
            click.echo(f"-> {path}")
    click.echo(f"time: {res.timings}", err=True)


# ---------------------------------------------------------------- explain
@main.command()
@click.option("--index", "index_dir", default=DEFAULT_INDEX, show_default=True, type=click.Path(exists=True))
@_one_target_options("to explain")
@click.option("--top", default=20, show_default=True, type=click.IntRange(min=1),
              help="Neurons per layer shown and, with --deactivate, switched off (the paper's 20).")
@click.option("--doc", default=None, help="Also explain why this DOCID ranks where it does.")
@click.option("--deactivate", is_flag=True,
              help="Also run the paper's deactivation test on the index's backbone (held-out multiple-choice "
                   "examples; minutes on a CPU).")
@click.option("--against", multiple=True, help="--deactivate: also switch off this other target's top neurons "
                                               "(repeatable).")
@click.option("--rank", type=click.Choice(["frequency", "lift"]), default="frequency", show_default=True,
              help="--deactivate: switch off each target's most frequent neurons per layer, or those of highest "
                   "lift over the pool (the --weighting lift specificity), which skips the neurons every text uses.")
@click.option("--draws", default=5, show_default=True, type=click.IntRange(min=1),
              help="--deactivate: seeded draws of as many random neurons.")
@click.option("--heldout", default=200, show_default=True, type=click.IntRange(min=1),
              help="--deactivate: held-out examples measured (a seeded sample of those the profile did not use).")
@click.option("--max-examples", type=click.IntRange(min=1), default=None,
              help="Profile a random sample of this many examples [default: all; 200 with --deactivate].")
@click.option("--example-seed", type=int, default=0, show_default=True, help="Seed of the --max-examples sample.")
@click.option("--power", default=1.0, show_default=True, help="--doc: profile weights c^p / sum c^p, as the query's.")
@click.option("--weighting", type=click.Choice(["none", "lift", "idf"]), default="none", show_default=True,
              help="--doc: the query's --weighting.")
@click.option("--device", default="auto", show_default=True, help="For the backbone (target encoding, --deactivate).")
@click.option("--json", "json_out", default=None, type=click.Path(), help="Write the explanation as JSON here.")
@click.option("--html", "html_out", default=None, type=click.Path(), help="Write an HTML page with plots here.")
@_user_errors
def explain(name: str | None, file: str | None, filters: tuple[str, ...], against: tuple[str, ...],
            **kw: Any) -> None:
    """Explain a target's profile: per layer its most frequent neurons with their frequency in the target and
    in the pool (lift), how concentrated it is and which layers separate it from the pool most.

    \b
      nagindex explain --index idx --target arc_easy
      nagindex explain --index idx --target arc_easy --doc wiki-000123
      nagindex explain --index idx --target arc_easy --deactivate --against hellaswag --json deact.json

    --doc: a document's score, rank and percentile, and the neurons it shares with the profile per layer.
    --deactivate: zero the top neurons per layer in the backbone and measure its accuracy on held-out
    examples, against the intact backbone, random neurons and other targets' neurons (paper Sec. 5).
    """
    from nagindex.explain.run import explain as run_explain
    from nagindex.query.request import parse_target

    if (name is None) == (file is None):
        raise click.UsageError("give one target: --target NAME or --target-file FILE")
    if filters and file is None:
        raise click.UsageError("--target-filter applies to --target-file")
    target = parse_target(name) if name is not None else parse_target(file, "file", filters)
    res = run_explain(target, against=[parse_target(a) for a in against], **kw)
    click.echo(res.table())
    for path in (res.json_out, res.html_out):
        if path is not None:
            click.echo(f"-> {path}")


# ---------------------------------------------------------------- demo
@main.command()
@click.option("--out", "out_dir", default="demo", show_default=True, type=click.Path(), help="Working folder.")
@click.option("--docs", "n_docs", default=2000, show_default=True, help="Corpus size (500 to ~11.7K passages).")
@click.option("--fraction", default=0.2, show_default=True, help="Token budget of each selection.")
@click.option("--max-examples", default=200, show_default=True, help="Random target examples per target (200 suffice: paper Sec. 4.1).")
@click.option("--planted", default=12, show_default=True,
              help="Passages with an ARC-Challenge test question set into them, which decontamination must "
                   "remove from the ARC selections (0: none).")
@_user_errors
def demo(out_dir: str, n_docs: int, fraction: float, max_examples: int, planted: int) -> None:
    """Run the whole job offline on real data: ingest real passages with the embedded SmolLM2-135M,
    then select for arc_challenge and for the arc_challenge+triviaqa mixture.

    \b
      nagindex demo --out demo/
    """
    from nagindex.demo_run import run_demo

    run_demo(out_dir, n_docs=n_docs, fraction=fraction, max_examples=max_examples, planted=planted, echo=click.echo)


# ---------------------------------------------------------------- report
@main.command()
@click.argument("selection", type=click.Path(exists=True))
@click.option("--index", "index_dir", default=DEFAULT_INDEX, show_default=True, type=click.Path(exists=True),
              help="The index the selection was made from.")
@click.option("-o", "--output", "out", default=None, type=click.Path(),
              help="HTML file to write [default: <selection>.html].")
@click.option("--group-by", type=click.Choice(["source", "docid-prefix"]), default="source", show_default=True,
              help="Composition groups: the input file, or the docid before its last '-' (demo corpus).")
@click.option("--device", default="auto", show_default=True, help="For encoding target examples not cached.")
@click.option("--method", type=click.Choice(["nag", "nait"]), default=None,
              help="The selection's scoring [default: its manifest's]; nait needs an index with NAIT features.")
@_user_errors
def report(selection: str, index_dir: str, out: str | None, group_by: str, device: str, method: str | None) -> None:
    """Write a one-file HTML report with plots of a SELECTION written by `query` or `mix` (a file, or the
    folder of parts the shards wrote with `-o DIR`).

    \b
      nagindex report arc_challenge.parquet --index idx/ -o report.html
      nagindex report mix.parquet --index demo/idx --group-by docid-prefix
      nagindex report math.parquet --index it-idx --method nait

    Re-scores the pool from the index to plot scores, source composition, target
    overlap and per-layer contributions, then each target's profile neurons and its
    top documents, each linked to its explanation (`nagindex explain`). The target
    examples are the ones the query used (its manifest records --max-examples and --example-seed), so
    their NAGs come from the target cache: no LLM pass. A selection made with --method nait is scored by NAIT
    (its cached directions); the neuron sections are NAG-only and left out, as the page says.
    """
    from nagindex.explain.html import report_section
    from nagindex.query.report_page import write_report

    if out is None:
        out = str(Path(selection).with_suffix(".html"))
    explained = functools.partial(report_section, index_dir=index_dir, device=device)
    path = write_report(selection, index_dir, out, group_by=group_by, device=device, sections=[explained],
                        method=method)
    click.echo(f"report -> {path}")
