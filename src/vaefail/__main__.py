"""Command line of the workflow's jobs: `python -m vaefail <command> ...`.

Each command calls one function of the package; the Snakemake rules call these.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import signal
import sys
import traceback
from pathlib import Path

from .catalogue import FIGURE_KINDS, TABLES
from .config import ConfigError
from .data.uci import DataIntegrityError
from .files import ResultReadError, ResultWriteError


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

    # the ground-truth decoder; appendix F's linear-Gaussian data have none (the flag alone)
    surrogate_help = "the ground-truth decoder (.pt); none for the linear-Gaussian data of appendix F"

    c = command("dataset", "draw every version of a data set from its ground-truth decoder")
    c.add_argument("--dataset", required=True)
    c.add_argument("--surrogate", nargs="?", required=True, help=surrogate_help)
    c.add_argument("--out", nargs="+", required=True)

    def training_command(name, help_text):
        c = command(name, help_text)
        c.add_argument("--dataset", required=True)
        c.add_argument("--surrogate", nargs="?", required=True, help=surrogate_help)
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
    c.add_argument("--manifest", default=None, help="the job's manifest, written after every member's result")

    c = training_command("train-ss", "train all alpha x gamma x restarts of one semi-supervised setting")
    c.add_argument("--experiment", required=True)
    c.add_argument("--setting", required=True)
    c.add_argument("--out-stems", nargs="+", required=True)
    c.add_argument("--manifest", default=None, help="the job's manifest, written after every member's result")

    c = command("uci-splits", "verify a UCI data set and write its train/validation/test splits")
    c.add_argument("--dataset", required=True)
    c.add_argument("--uci-file", required=True, help="the data set's file (data/uci/...)")
    c.add_argument("--out", nargs="+", required=True)

    c = command("select", "pick the best restart and hyperparameters of an experiment")
    c.add_argument("--experiment", required=True)
    c.add_argument("--outdir", required=True)
    c.add_argument("--out", required=True)
    c.add_argument("--out-all", required=True)

    c = command("table", "build one table (csv + tex) from selected results")
    c.add_argument("--table", required=True, choices=list(TABLES))
    c.add_argument("--selected", nargs="+", required=True)
    c.add_argument("--out", required=True)

    c = command("disentanglement-table", "appendix F: closed form and the trained models' MIG (csv + tex)")
    c.add_argument("--all-restarts", required=True, help="selection's table of every restart of the experiment")
    c.add_argument("--outdir", required=True, help="the output folder, whose data and weights it reads")
    c.add_argument("--out", required=True)

    c = command("figure-claims", "measure the claims of Theorem 1 and Figures 2/18 on the selected models")
    c.add_argument("--outdir", required=True)
    c.add_argument("--out-theorem1", required=True)
    c.add_argument("--out-separation", required=True)
    c.add_argument("--out-separation-restarts", required=True)
    c.add_argument("--out-collapse", required=True)
    c.add_argument("--out-label-share", required=True)

    c = command("appendix-k", "appendix K: denoising and attack tables and Figure 5 from the trained models")
    c.add_argument("--outdir", required=True)
    c.add_argument("--out-denoising", required=True)
    c.add_argument("--out-attack", required=True)
    c.add_argument("--out-figure", required=True, help="output path without extension (.pdf and .png)")
    c.add_argument("--threads", type=int, default=1)

    c = command("claims", "score every claim of the paper with its evidence: claims.csv")
    c.add_argument("--outdir", required=True, help="the output folder, whose selected models and tables it reads")
    c.add_argument("--out", required=True)

    c = sub.add_parser("compare-claims", help="two claims tables of one configuration run with different seeds: "
                       "decided claims in each, class changes and flips between supported and contradicted")
    c.add_argument("first")
    c.add_argument("second")
    c.add_argument("--out", default=None, help="write the changed claims here (CSV)")

    c = command("paper-scale", "the paper's kNN cells against ours on each candidate scale of the statistic, and "
                               "the evaluation noise of the kNN statistic")
    c.add_argument("--outdir", required=True)
    c.add_argument("--out", required=True)
    c.add_argument("--out-summary", required=True)
    c.add_argument("--out-null", required=True)
    c.add_argument("--out-noise", required=True)

    c = command("figure", "draw one figure from saved results")
    c.add_argument("--figure", required=True, choices=FIGURE_KINDS)
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
    for c in sub.choices.values():
        c.add_argument("--log", default=None,
                       help="write the output here; a failure is also reported on stderr, naming this file")
    return p


# Errors whose message says all (the file, the cause, the fix): shown without their type.
EXPLAINED_ERRORS = (ResultWriteError, ResultReadError, ConfigError, DataIntegrityError)
# Commands that need no torch (and no CPU tuning for it).
TORCH_FREE_COMMANDS = ("settings", "select", "table", "claims", "compare-claims", "record", "paper")


def main(argv=None) -> None:
    """Run one command.  With --log, the command's output goes to that file and its error,
    if it fails, also to stderr in one line naming the log: a workflow run shows the cause
    of a failed job on screen, also when the log cannot be written (a full disk).  A failed
    command exits with status 1 (a result that cannot be written or read: files.py's
    messages; anything else: its type and message, the traceback in the log).  SIGTERM and
    Ctrl-C end it like an exception (exit status 143 and 130), so a file being written is
    discarded, not left half-written, and the previous results stay as they were."""
    args = _parser().parse_args(argv)
    name = f"python -m vaefail {args.command}"
    screen = _send_output_to_log(args.log, name)
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: _terminate(signum, name, screen, args.log))
    try:
        _run(args, name, screen)
    except KeyboardInterrupt:
        _report(screen, args.log, f"{name}: interrupted (Ctrl-C); nothing half-written is left")
        sys.exit(130)
    except Exception as error:    # noqa: BLE001 (every failure is reported the same way)
        if isinstance(error, EXPLAINED_ERRORS):
            message = str(error)
        else:
            with contextlib.suppress(OSError):   # into the log (not via logging: ERRORs go on screen too)
                traceback.print_exc()
            message = f"{type(error).__name__}: {error}"
        _report(screen, args.log, f"{name}: error: {_shorten(message)}")
        sys.exit(1)
    finally:
        signal.signal(signal.SIGTERM, previous)


def _send_output_to_log(log_path: str | None, name: str):
    """Point stdout and stderr (file descriptors 1 and 2: also C libraries' and child
    processes' output) at `log_path`; return a stream to the original stderr, the screen of
    a local run.  Without a log, or when it cannot be opened, everything stays on stderr."""
    if log_path is None:
        return sys.stderr
    try:
        os.makedirs(os.path.dirname(log_path) or ".", exist_ok=True)
        fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    except OSError as error:
        print(f"{name}: cannot write its log {log_path} ({error.strerror}); logging here instead",
              file=sys.stderr)
        return sys.stderr
    sys.stdout.flush()
    sys.stderr.flush()
    screen = os.fdopen(os.dup(2), "w", buffering=1)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)
    return screen


def _shorten(message: str, max_lines: int = 20) -> str:
    lines = message.rstrip().splitlines() or [""]
    if len(lines) > max_lines:
        lines = lines[:max_lines] + [f"... ({len(lines) - max_lines} more lines in the log)"]
    return "\n".join(lines)


def _report(screen, log_path: str | None, line: str) -> None:
    """`line` onto the screen, naming the log, and into the log (which may be unwritable:
    a full disk)."""
    if screen is not sys.stderr:
        print(f"{line}\n  (log: {log_path})", file=screen, flush=True)
    try:
        print(line, file=sys.stderr, flush=True)
    except OSError:
        if screen is sys.stderr:
            raise


def _terminate(signum, name: str, screen, log_path: str | None) -> None:
    _report(screen, log_path, f"{name}: terminated by signal {signum}; nothing half-written is left")
    raise SystemExit(128 + signum)


def _run(args: argparse.Namespace, name: str, screen) -> None:
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    if screen is not sys.stderr:   # errors logged by a job that goes on (all members failed) show too
        on_screen = logging.StreamHandler(screen)
        on_screen.setLevel(logging.ERROR)
        on_screen.setFormatter(logging.Formatter(f"{name}: %(levelname)s: %(message)s"))
        logging.getLogger().addHandler(on_screen)
    if args.command not in TORCH_FREE_COMMANDS:
        from .runtime import configure_cpu
        configure_cpu(getattr(args, "threads", None))
    from .files import load_settings, write_settings
    if args.command == "settings":
        write_settings(json.loads(args.settings_json), args.out, args.scale)
        return
    if args.command == "compare-claims":
        from .report.claims import write_verdict_comparison
        write_verdict_comparison(args.first, args.second, args.out)
        return
    settings = load_settings(args.settings)
    if args.command == "surrogate":
        from .data.surrogate import make_surrogate
        make_surrogate(settings, args.base, args.out)
    elif args.command == "dataset":
        from .data.dataset_files import make_dataset
        make_dataset(settings, args.dataset, args.surrogate, args.out)
    elif args.command == "gt-encoders":
        from .jobs.gt_encoders import fit_gt_encoders
        fit_gt_encoders(settings, args.dataset, args.surrogate, args.data, args.out, args.device)
    elif args.command == "train":
        from .jobs.training_job import train_job
        train_job(settings, args.experiment, args.dataset, args.setting, args.surrogate,
                  args.data, args.gt_encoders, args.out_stems, args.device, args.manifest)
    elif args.command == "train-ss":
        from .jobs.semisupervised import train_ss_job
        train_ss_job(settings, args.experiment, args.dataset, args.setting, args.surrogate, args.data,
                     args.out_stems, args.device, args.manifest)
    elif args.command == "uci-splits":
        from .data import uci
        from .data.dataset_files import make_uci_splits
        # make_uci_splits reads its file from uci.DEFAULT_DATA_DIR: point that at the folder of
        # the file the rule declares, not at the data/uci next to whichever vaefail is imported
        uci.DEFAULT_DATA_DIR = _uci_data_dir(args.dataset, args.uci_file)
        make_uci_splits(settings, args.dataset, args.out)
    elif args.command == "select":
        from .report.selection import select_experiment
        select_experiment(settings, args.experiment, args.outdir, args.out, args.out_all)
    elif args.command == "table":
        from .report.tables import build_table
        build_table(settings, args.table, args.selected, args.out)
    elif args.command == "disentanglement-table":
        from .report.analysis_tables import build_disentanglement_table
        build_disentanglement_table(settings, args.all_restarts, args.outdir, args.out)
    elif args.command == "figure-claims":
        from .report.analysis_tables import write_figure_claims
        write_figure_claims(settings, args.outdir, args.out_theorem1, args.out_separation,
                            args.out_separation_restarts, args.out_collapse, args.out_label_share)
    elif args.command == "appendix-k":
        from .report.analysis_tables import write_appendix_k
        write_appendix_k(settings, args.outdir, args.out_denoising, args.out_attack, args.out_figure)
    elif args.command == "claims":
        from .report.claims import write_claims
        write_claims(settings, args.outdir, args.out)
    elif args.command == "paper-scale":
        from .report.paper_scale import write_paper_scale
        write_paper_scale(settings, args.outdir, args.out, args.out_summary, args.out_null, args.out_noise)
    elif args.command == "figure":
        from .report.figures import draw_figure
        draw_figure(settings, args.figure, args.outdir, args.out, dataset=args.dataset, method=args.method)
    elif args.command == "record":
        from .report.record import write_run_record
        write_run_record(settings, args.outdir, args.out_runtimes, args.out_provenance)
    elif args.command == "paper":
        from .report.document import build_paper
        build_paper(settings, args.outdir, args.out)


def _uci_data_dir(dataset: str, uci_file: str) -> Path:
    """The data directory that holds `uci_file` as the data set's file (data/uci/<its path>)."""
    from .data.uci import uci_spec
    relative = Path(uci_spec(dataset).path)
    path = Path(uci_file)
    if path.parts[-len(relative.parts):] != relative.parts:
        raise ValueError(f"--uci-file {uci_file} is not the {dataset} file: it should end in {relative}")
    return Path(*path.parts[:-len(relative.parts)]) if len(path.parts) > len(relative.parts) else Path(".")


if __name__ == "__main__":
    main()
