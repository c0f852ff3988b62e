"""Does ordering by expected improvement beat a random order? Run both over several seeds.

Each seed runs the reallocation campaign twice on the same pool of points — once reordering the
queue with the Gaussian process (``--order gp``), once keeping the random order — and counts the
simulations each needed for the best value to reach the target. Prints the table, writes it
to ``comparison.md`` and the best-so-far curves to ``comparison.png`` in the run directory.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
if str(HERE.parent) not in sys.path:
    sys.path.insert(0, str(HERE.parent))

from _shared.cli import HelpFormatter  # noqa: E402
from _shared.loading import load_module  # noqa: E402
from _shared.runlog import new_run_dir, read_results  # noqa: E402

campaign = load_module(HERE / "campaign.py", "steersman_example_reallocation")
ORDERS = ("gp", "random")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="reallocation-compare", description=__doc__.split("\n\n")[0],
        epilog="Other options (e.g. --budget 60 --sim-time 0.01 0.05) go to each campaign; "
               "see campaign.py --help.",
        formatter_class=HelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4, 5, 6],
                        help="seeds of the random order and run times")
    parser.add_argument("--run-dir", type=Path, default=None,
                        help="directory for all runs (default: runs/reallocation-compare-<time>)")
    parser.add_argument("--table", type=Path, default=None, help="also write the table here")
    parser.add_argument("--figure", type=Path, default=None, help="also write the figure here")
    return parser.parse_known_args(argv)  # type: ignore[return-value]


def median_or_none(counts: list[int | None], budget: int) -> str:
    """The median, counting a miss as more than the budget; a string for the table."""
    ranked = sorted(c if c is not None else budget + 1 for c in counts)
    middle = statistics.median_low(ranked)
    return f">{budget}" if middle > budget else str(middle)


def main(argv: list[str] | None = None) -> int:
    """Run the campaign for each seed and order; print the median simulations to the target."""
    args, extra = parse_args(argv)
    base = new_run_dir("reallocation-compare", args.run_dir)
    summaries: dict[str, list[dict]] = {order: [] for order in ORDERS}
    for seed in args.seeds:
        for order in ORDERS:
            run_dir = base / f"{order}-seed{seed}"
            print(f"--- seed {seed}, order {order}", flush=True)
            code = campaign.main([*extra, "--order", order, "--seed", str(seed),
                                  "--run-dir", str(run_dir), "--no-figure", "--quiet"])
            if code:
                return code
            summary = json.loads((run_dir / "summary.json").read_text())
            summary["curve"] = best_so_far(run_dir)
            summaries[order].append(summary)

    first = summaries["gp"][0]
    budget, target = first["simulations"], first["target"]
    lines = [f"Target value {target:.4f} (Ackley, the pool's 10th best unless --target was given); "
             f"budget {budget} simulations; seeds {' '.join(map(str, args.seeds))}.", "",
             "| order | simulations to reach the target, per seed | median | best value, median |",
             "|---|---|---|---|"]
    for order in ORDERS:
        counts = [s["simulations_to_target"] for s in summaries[order]]
        per_seed = " ".join(str(c) if c is not None else f">{budget}" for c in counts)
        best = statistics.median(s["best_value"] for s in summaries[order])
        name = "GP + expected improvement" if order == "gp" else "random"
        lines.append(f"| {name} | {per_seed} | {median_or_none(counts, budget)} | {best:.3f} |")
    table = "\n".join(lines) + "\n"
    print(table)
    (base / "comparison.md").write_text(table)
    figure = plot_curves(summaries, target, base / "comparison.png")
    for source, copy in ((base / "comparison.md", args.table), (figure, args.figure)):
        if copy is not None:
            copy.parent.mkdir(parents=True, exist_ok=True)
            copy.write_bytes(source.read_bytes())
    print(f"run directory: {base}\nfigure: {figure}")
    return 0


def best_so_far(run_dir: Path) -> list[float]:
    """The best value after each simulation result, in arrival order."""
    curve, best = [], float("inf")
    for record in read_results(run_dir / "results.jsonl"):
        if record["topic"] == "simulate" and record["success"]:
            best = min(best, record["value"])
            curve.append(best)
    return curve


def plot_curves(summaries: dict[str, list[dict]], target: float, path: Path) -> Path:
    """Best value found against simulations run: each seed thin, the median thick."""
    import numpy as np
    from _shared.plots import plt

    fig, ax = plt.subplots(figsize=(7, 4.2))
    colours = {"gp": "#d62728", "random": "#7f7f7f"}
    names = {"gp": "GP + expected improvement", "random": "random order"}
    for order, runs in summaries.items():
        length = min(len(s["curve"]) for s in runs)
        curves = np.array([s["curve"][:length] for s in runs])
        steps = np.arange(1, length + 1)
        for curve in curves:
            ax.plot(steps, curve, color=colours[order], alpha=0.25, linewidth=0.8)
        ax.plot(steps, np.median(curves, axis=0), color=colours[order], linewidth=2.2,
                label=f"{names[order]} (median of {len(runs)})")
    ax.axhline(target, color="black", linestyle="--", linewidth=1, label="target")
    ax.set_xlabel("Simulations completed")
    ax.set_ylabel("Best Ackley value found")
    ax.legend(frameon=False)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


if __name__ == "__main__":
    sys.exit(main())
