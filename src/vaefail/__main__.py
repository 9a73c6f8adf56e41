"""Command line of the workflow's jobs: `python -m vaefail <command> ...`.

Each command calls one function of the package; the Snakemake rules call these.
"""
from __future__ import annotations

import argparse
import json
import logging
import signal
import sys


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m vaefail", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)

    def command(name, help_text):
        c = sub.add_parser(name, help=help_text)
        c.add_argument("--settings", required=True, help="the run's settings.json")
        return c

    c = sub.add_parser("settings", help="record the resolved settings of a run")
    c.add_argument("--settings-json", required=True)
    c.add_argument("--scale", required=True)
    c.add_argument("--out", required=True)

    c = command("surrogate", "fit the ground-truth decoder network of a 2-D example")
    c.add_argument("--base", required=True)
    c.add_argument("--out", required=True)

    c = command("dataset", "draw every version of a data set from its ground-truth decoder")
    c.add_argument("--dataset", required=True)
    c.add_argument("--surrogate", required=True)
    c.add_argument("--out", nargs="+", required=True)

    def training_command(name, help_text):
        c = command(name, help_text)
        c.add_argument("--dataset", required=True)
        c.add_argument("--surrogate", required=True)
        c.add_argument("--data", nargs="+", required=True, help="every version of the data set")
        c.add_argument("--device", default="cpu")
        c.add_argument("--threads", type=int, default=1)
        return c

    c = training_command("gt-encoders", "fit encoders to the frozen ground-truth decoder")
    c.add_argument("--out", nargs="+", required=True)

    c = training_command("train", "train all restarts of one setting as one batched ensemble")
    c.add_argument("--experiment", required=True)
    c.add_argument("--setting", required=True)
    c.add_argument("--gt-encoders", nargs="*", default=[])
    c.add_argument("--out-stems", nargs="+", required=True)

    c = training_command("train-ss", "train all alpha x gamma x restarts of one semi-supervised setting")
    c.add_argument("--experiment", required=True)
    c.add_argument("--setting", required=True)
    c.add_argument("--out-stems", nargs="+", required=True)

    c = command("uci-splits", "verify a UCI data set and write its train/validation/test splits")
    c.add_argument("--dataset", required=True)
    c.add_argument("--out", nargs="+", required=True)

    c = command("select", "pick the best restart and hyperparameters of an experiment")
    c.add_argument("--experiment", required=True)
    c.add_argument("--outdir", required=True)
    c.add_argument("--out", required=True)
    c.add_argument("--out-all", required=True)

    c = command("table", "build one table (csv + tex) from selected results")
    c.add_argument("--table", required=True, choices=["table1", "table2", "theorem2", "table3", "table4", "table5", "table6"])
    c.add_argument("--selected", nargs="+", required=True)
    c.add_argument("--out", required=True)

    c = command("figure", "draw one figure from saved results")
    c.add_argument("--figure", required=True, choices=["panels", "figure1", "latent", "figure2", "ss-panels"])
    c.add_argument("--outdir", required=True)
    c.add_argument("--dataset", default=None)
    c.add_argument("--method", default=None)
    c.add_argument("--out", required=True, help="output path without extension (.pdf and .png)")

    c = command("record", "write the run record: job run times and the results' provenance")
    c.add_argument("--outdir", required=True)
    c.add_argument("--out-runtimes", required=True)
    c.add_argument("--out-provenance", required=True)

    c = command("paper", "build the reproduction report PDF with latexmk")
    c.add_argument("--outdir", required=True)
    c.add_argument("--out", required=True)
    return p


def main(argv=None) -> None:
    """Run one command.  A result that cannot be written (a full disk: jobs.ResultWriteError)
    ends the command with that message and exit status 1, not a traceback; SIGTERM ends it
    like an exception (exit status 143), so a file being written is discarded, not left
    half-written, and the previous results stay as they were."""
    args = _parser().parse_args(argv)
    previous = signal.signal(signal.SIGTERM, _terminate)
    try:
        _run(args)
    except OSError as error:
        from .jobs import ResultWriteError
        if not isinstance(error, ResultWriteError):
            raise
        print(f"python -m vaefail {args.command}: error: {error}", file=sys.stderr)
        sys.exit(1)
    finally:
        signal.signal(signal.SIGTERM, previous)


def _terminate(signum, frame) -> None:
    print(f"python -m vaefail: terminated by signal {signum}", file=sys.stderr)
    raise SystemExit(128 + signum)


def _run(args: argparse.Namespace) -> None:
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    from .runtime import configure_cpu
    configure_cpu(getattr(args, "threads", None))
    from . import jobs
    if args.command == "settings":
        jobs.write_settings(json.loads(args.settings_json), args.out, args.scale)
        return
    settings = jobs.load_settings(args.settings)
    if args.command == "surrogate":
        jobs.make_surrogate(settings, args.base, args.out)
    elif args.command == "dataset":
        jobs.make_dataset(settings, args.dataset, args.surrogate, args.out)
    elif args.command == "gt-encoders":
        jobs.fit_gt_encoders(settings, args.dataset, args.surrogate, args.data, args.out, args.device)
    elif args.command == "train":
        jobs.train_job(settings, args.experiment, args.dataset, args.setting, args.surrogate,
                       args.data, args.gt_encoders, args.out_stems, args.device)
    elif args.command == "train-ss":
        from .semisupervised import train_ss_job
        train_ss_job(settings, args.experiment, args.dataset, args.setting, args.surrogate, args.data,
                     args.out_stems, args.device)
    elif args.command == "uci-splits":
        from .semisupervised import make_uci_splits
        make_uci_splits(settings, args.dataset, args.out)
    elif args.command == "select":
        from .selection import select_experiment
        select_experiment(settings, args.experiment, args.outdir, args.out, args.out_all)
    elif args.command == "table":
        from .tables import build_table
        build_table(settings, args.table, args.selected, args.out)
    elif args.command == "figure" and args.figure in ("figure2", "ss-panels"):
        from .figures_ss import draw_ss_figure
        draw_ss_figure(settings, args.figure, args.outdir, args.out, dataset=args.dataset, method=args.method)
    elif args.command == "figure":
        from .figures import draw_figure
        draw_figure(settings, args.figure, args.outdir, args.out, dataset=args.dataset, method=args.method)
    elif args.command == "record":
        from .record import write_run_record
        write_run_record(settings, args.outdir, args.out_runtimes, args.out_provenance)
    elif args.command == "paper":
        from .report import build_paper
        build_paper(settings, args.outdir, args.out)


if __name__ == "__main__":
    main()
