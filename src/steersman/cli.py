"""The ``steersman`` command: run, watch, resume and report campaigns; plan allocations.

Every subcommand has ``--help``. Bad arguments and known failures print one line on stderr and
exit with 2 (usage) or 1 (failure); only a campaign's own errors show a traceback.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from datetime import datetime
from time import time
from typing import Any, NoReturn

from steersman.exceptions import RunDirectoryError, SteersmanError

PROG = "steersman"
#: Errors the CLI reports as one line, not a traceback.
KNOWN_ERRORS = (ValueError, OSError, SteersmanError, RuntimeError, ImportError)
#: What a subcommand returns: an exit code, or the campaign call to make outside error handling.
Outcome = int | Callable[[], int]


class _Parser(argparse.ArgumentParser):
    """An argument parser whose errors are one line naming the problem and where help is."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see '{self.prog} --help')\n")


def build_parser() -> argparse.ArgumentParser:
    """The parser of the whole command (``allocate`` options are its module's own)."""
    parser = _Parser(prog=PROG, description="Steer computational campaigns: run them, watch "
                     "them, resume them after a crash, and report on them.")
    from steersman import __version__

    parser.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    commands.required = True

    run = commands.add_parser(
        "run", help="run a campaign (a .py file, a directory with campaign.py, or an example)",
        description="Import the campaign and call its main(ARGS). The campaign file and "
        "arguments are recorded in its run directory, so that 'steersman resume' can restart "
        "it. Campaigns accept --run-dir DIR.")
    run.add_argument("campaign", help="campaign file, directory holding campaign.py, module "
                     "name, or the name of an example under ./examples")
    run.add_argument("args", nargs=argparse.REMAINDER,
                     help="arguments for the campaign's main (e.g. --run-dir runs/a)")
    run.set_defaults(handler=_run)

    stat = commands.add_parser("status", help="counts, latest results, and whether it is alive",
                               description="Show how far the campaign in RUN_DIR got.")
    stat.add_argument("run_dir", metavar="RUN_DIR")
    stat.add_argument("--json", action="store_true", help="print the status as JSON")
    stat.add_argument("--last", type=_count, default=5, metavar="N",
                      help="how many of the latest results to list (default: 5)")
    stat.set_defaults(handler=_status)

    resume = commands.add_parser(
        "resume", help="continue a killed campaign from its run directory",
        description="Run the campaign recorded in RUN_DIR again with the same arguments: "
        "finished results are replayed to the thinker and unfinished requests resent.")
    resume.add_argument("run_dir", metavar="RUN_DIR")
    resume.add_argument("--force", action="store_true",
                        help="run again even if the campaign finished")
    resume.set_defaults(handler=_resume)

    report = commands.add_parser(
        "report", help="write plots (PNG) and a text summary of a run",
        description="Draw the allocation timeline, utilisation, durations by method, queue "
        "wait and overhead, and the best value over time; write summary.txt.")
    report.add_argument("run_dir", metavar="RUN_DIR")
    report.add_argument("--out", metavar="DIR", default=None,
                        help="where to write (default: RUN_DIR/report)")
    report.add_argument("--goal", choices=("max", "min"), default=None,
                        help="whether the best value is the largest or smallest (default: "
                        "the run's saved 'goal' parameter, else max)")
    report.add_argument("--topic", default=None,
                        help="topic whose values are the objective (default: the run's "
                        "'value_topic' parameter, else the topic with most numeric values)")
    report.set_defaults(handler=_report)

    commands.add_parser("allocate", add_help=False,
                        help="compute the best split of cores between applications "
                        "('steersman allocate --help')")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``steersman`` command."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "allocate":
        return _allocate(argv[1:])
    args = build_parser().parse_args(argv)
    handler: Callable[[argparse.Namespace], Outcome] = args.handler
    try:
        outcome = handler(args)
        if not callable(outcome):
            return outcome
    except KeyboardInterrupt:
        print(f"{PROG} {args.command}: interrupted", file=sys.stderr)
        return 130
    except KNOWN_ERRORS as exc:
        print(f"{PROG} {args.command}: error: {exc}", file=sys.stderr)
        return 1
    try:
        return outcome()  # a campaign's own errors keep their traceback
    except RunDirectoryError as exc:  # raised as its thinker is made, before anything ran
        print(f"{PROG} {args.command}: error: {exc}", file=sys.stderr)
        return 1


# --- subcommands ----------------------------------------------------------------------------


def _run(args: argparse.Namespace) -> Outcome:
    from steersman.campaign import launch

    recorded, campaign_main = launch.load_main(args.campaign)
    return lambda: launch.call(campaign_main, launch.Launch(recorded, list(args.args), "run"))


def _resume(args: argparse.Namespace) -> Outcome:
    from steersman.campaign import launch

    prepared = launch.prepare_resume(args.run_dir, args.force)
    _, campaign_main = launch.load_main(prepared.path)
    return lambda: launch.call(campaign_main, prepared)


def _status(args: argparse.Namespace) -> Outcome:
    from steersman.campaign import status

    info = status(args.run_dir, last=args.last)
    if args.json:
        print(json.dumps(info, indent=2))
    else:
        print(format_status(info))
    return 0


def _report(args: argparse.Namespace) -> Outcome:
    from steersman.campaign import write_report

    out = write_report(args.run_dir, out_dir=args.out, goal=args.goal, value_topic=args.topic)
    print((out / "summary.txt").read_text(), end="")
    print(f"report written to {out}")
    return 0


def _allocate(argv: list[str]) -> int:
    import importlib

    try:
        allocation: Any = importlib.import_module("steersman.allocation.cli")
    except ImportError as exc:
        print(f"{PROG} allocate: unavailable: the allocation module cannot be imported ({exc})",
              file=sys.stderr)
        return 1
    parser = _Parser(prog=f"{PROG} allocate",
                     description="Compute the best split of cores between applications.")
    allocation.configure_parser(parser)
    args = parser.parse_args(argv)
    try:
        return int(allocation.run(args) or 0)
    except KNOWN_ERRORS as exc:
        print(f"{PROG} allocate: error: {exc}", file=sys.stderr)
        return 1


# --- formatting -----------------------------------------------------------------------------


def format_status(info: dict[str, Any]) -> str:
    """The status of a run as a few aligned lines of text."""
    lines = [f"run dir    {info['run_dir']}", f"thinker    {info.get('thinker') or '-'}"]
    campaign = info.get("campaign")
    if campaign:
        lines.append(f"campaign   {campaign.get('path')} {' '.join(campaign.get('args', []))}")
    state = info["state"]
    if info["alive"]:
        holder = info.get("holder") or {}
        state += f" (alive: pid {holder.get('pid', '?')} on {holder.get('host', '?')})"
    elif state in ("killed", "interrupted", "failed"):
        how = (f"{PROG} resume {info['run_dir']}" if campaign else
               f"run the campaign again with its run dir {info['run_dir']}")
        state += f" (not alive; continue it with: {how})"
    lines.append(f"state      {state}")
    if info.get("error"):
        lines.append(f"error      {info['error']}")
    if info.get("started"):
        activity = info.get("last_activity")
        ago = f", last activity {_ago(activity)}" if activity else ""
        lines.append(f"sessions   {info['sessions']}, first started {_clock(info['started'])}"
                     f"{ago}")
    topics = info.get("topics") or {}
    if topics:
        width = max(8, *(len(t) for t in topics)) + 2
        lines.append("")
        lines.append(f"{'topic':<{width}}{'submitted':>10}{'pending':>9}{'done':>8}{'failed':>8}")
        for topic, counts in topics.items():
            lines.append(f"{topic:<{width}}{counts['submitted']:>10}{counts['pending']:>9}"
                         f"{counts['done']:>8}{counts['failed']:>8}")
    last = info.get("last_results") or []
    if last:
        lines.append("")
        lines.append("latest results:")
        for entry in last:
            ok = "ok" if entry.get("success") else "FAILED"
            when = _clock(entry["received"]) if entry.get("received") else "-"
            lines.append(f"  {when}  {entry.get('topic')}  {entry.get('method')}  {ok}  "
                         f"{entry.get('value')}  (task {entry.get('task_id')})")
    return "\n".join(lines)


def _clock(stamp: float) -> str:
    return datetime.fromtimestamp(stamp).strftime("%Y-%m-%d %H:%M:%S")


def _ago(stamp: float) -> str:
    seconds = max(0.0, time() - stamp)
    if seconds < 120:
        return f"{seconds:.0f} s ago"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min ago"
    return f"{seconds / 3600:.1f} h ago"


def _count(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected a number >= 0, got {value}")
    return value


if __name__ == "__main__":
    raise SystemExit(main())
