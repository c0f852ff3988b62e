"""Molecular design: find QM9 molecules with a high ionisation potential, three ways.

Each thinker runs ``--search-count`` real GFN2-xTB simulations (vertical ionisation potential at
an RDKit geometry) over a checked-in subset of QM9. *random* picks molecules in a random order;
*batched* retrains a fingerprint model after each batch and pauses submission while it learns;
*interleaved* learns on one slot moved by the resource counter while the others keep simulating.
The figure shows molecules found above the threshold and which worker ran what, with the
workers' utilisation.

Run ``python examples/molecular_design/campaign.py --help``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from functools import partial
from pathlib import Path
from typing import Any

os.environ.setdefault("OMP_NUM_THREADS", "1")  # one xTB thread per worker

HERE = Path(__file__).resolve().parent
if str(HERE.parent) not in sys.path:  # the helpers shared by the examples live in examples/
    sys.path.insert(0, str(HERE.parent))

from _shared.chem import (  # noqa: E402
    check_search_space,
    compute_vertical,
    preload,
    run_model,
    train_model,
)
from _shared.cli import HelpFormatter  # noqa: E402
from _shared.loading import load_module  # noqa: E402
from _shared.runlog import new_run_dir, read_results  # noqa: E402

from steersman import LocalTaskServer, PipeQueues, PythonMethod, Result  # noqa: E402

thinkers = load_module(HERE / "thinkers.py", "steersman_example_molecular_design_thinkers")
SEARCH_SPACE = HERE / "data" / "qm9-subset.csv"
LABELS = {"simulate": "Simulation (xTB IP)", "train": "Training", "infer": "Inference"}


def load_search_space(path: Path, limit: int | None = None, max_atoms: int | None = None,
                      seed: int = 0) -> list[str]:
    """SMILES of the search space, optionally only small molecules or a random sample."""
    import pandas as pd

    frame = pd.read_csv(path)
    if max_atoms is not None:
        frame = frame[frame["n_atoms"] <= max_atoms]
    if limit is not None and limit < len(frame):
        frame = frame.sample(n=limit, random_state=seed)
    return frame["smiles"].tolist()


def run_thinker(name: str, args: argparse.Namespace, molecules: list[str],
                run_dir: Path) -> dict[str, Any]:
    """Run one thinker against a fresh task server; its files go to ``run_dir/<name>``."""
    from tqdm import tqdm

    out = new_run_dir(name, run_dir / name)
    queues = PipeQueues(topics=thinkers.TOPICS)
    methods = [compute_vertical,
               PythonMethod(partial(train_model, n_estimators=args.n_estimators),
                            name="train_model"),
               run_model]
    server = LocalTaskServer(queues, methods, threads=False, num_workers=args.workers)
    bars = None
    if not args.quiet:
        total = min(args.search_count, len(molecules))
        bars = {"started": tqdm(total=total, desc=f"{name:>11} started", position=0,
                                file=sys.stderr),
                "finished": tqdm(total=total, desc=f"{name:>11} successful", position=1,
                                 file=sys.stderr)}

    def on_event(kind: str, result: Result | None) -> None:
        if bars is not None and (kind == "started" or (result is not None and result.success)):
            bars[kind].update(1)

    thinker = thinkers.THINKERS[name](
        queues, args.workers, molecules, args.search_count, seed=args.seed,
        initial_count=args.initial_count, batch_size=args.batch_size,
        n_conformers=args.conformers, on_event=on_event, run_dir=out,
        progress=False if args.quiet else None)
    thinker.save_params(**{**vars(args), "thinker": name, "goal": "max",
                           "value_topic": "simulate"})
    started = time.perf_counter()
    try:
        with server:
            thinker.run()
    finally:
        if bars is not None:
            for bar in bars.values():
                bar.close()
    return summarise(name, out, args, time.perf_counter() - started)


def summarise(name: str, out: Path, args: argparse.Namespace, elapsed: float) -> dict[str, Any]:
    """Found-above-threshold curve and worker utilisation of one thinker's run."""
    from _shared.plots import task_spans, utilisation

    results = read_results(out / "results.jsonl")
    origin = min(r["timestamp"]["created"] for r in results)
    sims = [r for r in results if r["topic"] == "simulate"]
    found, curve = 0, []
    for record in sims:
        if record["success"] and record["value"] >= args.threshold:
            found += 1
        curve.append(found)
    spans = task_spans(results, origin)
    end = max(s.end for s in spans)
    summary = {"thinker": name, "simulations": len(sims),
               "successful": sum(1 for r in sims if r["success"]), "found": found,
               "found_curve": curve, "utilisation": utilisation(spans, args.workers, 0.0, end),
               "makespan_s": end, "elapsed_s": elapsed,
               "learning_tasks": sum(1 for r in results if r["topic"] != "simulate")}
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def figure(summaries: list[dict[str, Any]], run_dir: Path, args: argparse.Namespace) -> Path:
    """Found-vs-simulations and utilisation (left), each thinker's workers over time (right)."""
    from _shared.plots import draw_gantt, plt, task_spans

    colours = {"random": "#7f7f7f", "batched": "#9467bd", "interleaved": "#2ca02c"}
    fig = plt.figure(figsize=(12, 1.6 + 1.8 * len(summaries)))
    grid = fig.add_gridspec(len(summaries), 2, width_ratios=[1, 1.5])
    found_ax = fig.add_subplot(grid[:-1, 0]) if len(summaries) > 1 else fig.add_subplot(grid[0, 0])
    for summary in summaries:
        curve = summary["found_curve"]
        found_ax.plot(range(1, len(curve) + 1), curve, color=colours[summary["thinker"]],
                      linewidth=2, label=summary["thinker"])
    found_ax.set_xlabel("Simulations run")
    found_ax.set_ylabel(f"Molecules with IP > {args.threshold:g} eV")
    found_ax.legend(frameon=False, loc="upper left")
    found_ax.set_title("Molecules found")
    if len(summaries) > 1:
        util_ax = fig.add_subplot(grid[-1, 0])
        names = [s["thinker"] for s in summaries]
        values = [100 * s["utilisation"] for s in summaries]
        bars = util_ax.barh(names, values, color=[colours[n] for n in names])
        util_ax.bar_label(bars, labels=[f"{v:.0f}%" for v in values], padding=3)
        util_ax.set_xlim(0, 115)
        util_ax.set_xlabel("Worker utilisation (%)")
        util_ax.invert_yaxis()
    longest = max(s["makespan_s"] for s in summaries)
    for row, summary in enumerate(summaries):
        ax = fig.add_subplot(grid[row, 1])
        results = read_results(run_dir / summary["thinker"] / "results.jsonl")
        origin = min(r["timestamp"]["created"] for r in results)
        draw_gantt(ax, task_spans(results, origin), LABELS, legend=row == 0)
        ax.set_xlim(0, longest)
        ax.set_title(f"{summary['thinker']}: {100 * summary['utilisation']:.0f}% busy, "
                     f"{summary['makespan_s']:.0f} s", fontsize=10)
        if row == len(summaries) - 1:
            ax.set_xlabel("Time since start (s)")
    fig.tight_layout()
    path = run_dir / "molecular_design.png"
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="molecular_design", description=__doc__.split("\n\n")[0],
        formatter_class=HelpFormatter)
    parser.add_argument("--run-dir", type=Path, default=None,
                        help="directory of the run (default: runs/molecular_design-<time>)")
    parser.add_argument("--thinkers", nargs="+", choices=list(thinkers.THINKERS),
                        default=list(thinkers.THINKERS), help="policies to run, in order")
    parser.add_argument("--search-space", type=Path, default=SEARCH_SPACE,
                        help="CSV with a 'smiles' column (and 'n_atoms')")
    parser.add_argument("--max-molecules", type=int, default=None,
                        help="use a random sample of this many molecules of the search space")
    parser.add_argument("--max-atoms", type=int, default=None,
                        help="only molecules with at most this many atoms (hydrogens included)")
    parser.add_argument("--search-count", type=int, default=64, help="simulations per thinker")
    parser.add_argument("--initial-count", type=int, default=8,
                        help="results before the first training")
    parser.add_argument("--batch-size", type=int, default=4, help="new results between trainings")
    parser.add_argument("--workers", type=int, default=min(4, os.cpu_count() or 1),
                        help="worker processes (slots)")
    parser.add_argument("--conformers", type=int, default=16,
                        help="RDKit conformers screened with xTB per molecule")
    parser.add_argument("--n-estimators", type=int, default=32, help="trees of the random forest")
    parser.add_argument("--threshold", type=float, default=14.0,
                        help="ionisation potential (eV) counted as a hit")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random orders")
    parser.add_argument("--figure", type=Path, default=None, help="also write the figure here")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    args = parser.parse_args(argv)
    for name in ("search_count", "initial_count", "batch_size", "workers", "conformers",
                 "n_estimators"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be positive")
    for name in ("max_molecules", "max_atoms"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be positive")
    if not args.search_space.is_file():
        parser.error(f"--search-space {args.search_space}: no such file")
    return args


def campaign_dir(run_dir: Path | None) -> Path:
    """The campaign's directory; given one thinker's sub-directory, the campaign's (its parent).

    Each thinker records its own run directory, ``RUN_DIR/<thinker>``, so ``steersman status``
    and ``steersman resume`` see those; resuming one of them continues the whole campaign in
    RUN_DIR (thinkers that finished replay and end at once), not a new campaign inside it.
    """
    if (run_dir is not None and run_dir.name in thinkers.THINKERS
            and (run_dir / "params.json").is_file()):
        print(f"{run_dir} is the {run_dir.name} thinker's directory: continuing the campaign "
              f"in {run_dir.parent}", flush=True)
        run_dir = run_dir.parent
    return new_run_dir("molecular_design", run_dir)


def main(argv: list[str] | None = None) -> int:
    """Run each thinker in turn; print what it found and how busy it kept the workers."""
    args = parse_args(argv)
    molecules = load_search_space(args.search_space, args.max_molecules, args.max_atoms,
                                  args.seed)
    check_search_space(molecules, args)
    run_dir = campaign_dir(args.run_dir)
    preload()
    print(f"search space: {len(molecules)} molecules; {args.search_count} simulations per "
          f"thinker on {args.workers} workers\nrun directory: {run_dir}", flush=True)
    summaries = [run_thinker(name, args, molecules, run_dir) for name in args.thinkers]
    (run_dir / "summary.json").write_text(json.dumps(
        [{k: v for k, v in s.items() if k != "found_curve"} for s in summaries], indent=2) + "\n")
    path = figure(summaries, run_dir, args)
    if args.figure is not None:
        args.figure.parent.mkdir(parents=True, exist_ok=True)
        args.figure.write_bytes(path.read_bytes())
    print(f"\n{'thinker':>12} {'sims':>5} {'found':>6} {'utilisation':>12} {'time (s)':>9}")
    for s in summaries:
        print(f"{s['thinker']:>12} {s['simulations']:>5} {s['found']:>6} "
              f"{100 * s['utilisation']:>11.0f}% {s['makespan_s']:>9.1f}")
    print(f"(found: molecules with IP > {args.threshold:g} eV)")
    print(f"run directory: {run_dir}\nfigure: {path}"
          + (f" (copied to {args.figure})" if args.figure else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
