"""``steersman allocate FILE``: print the best split for the constraints in a JSON/YAML file."""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from steersman.allocation.constraints import Constraint, Distribution, static_split
from steersman.allocation.policies import TARGETS, get_target, optimize
from steersman.allocation.throughput import throughput_of
from steersman.allocation.workload import PowerModel, energy_of, finish_times

__all__ = ["configure_parser", "load_file", "run"]


def configure_parser(parser: argparse.ArgumentParser) -> None:
    """Add the ``allocate`` arguments to `parser`."""
    parser.add_argument("file", type=Path, help="JSON or YAML file of applications' constraints")
    parser.add_argument("--target", choices=sorted(TARGETS), default=None,
                        help="optimisation target (default: the file's, else throughput)")
    parser.add_argument("--cores", type=int, default=None,
                        help="cores to split (default: the file's 'cores')")


def load_file(
    path: Path, cores: int | None = None, target: str | None = None
) -> tuple[list[Constraint], int, str, PowerModel]:
    """Read constraints, core count, target and power model from a JSON or YAML file.

    Raises:
        OSError: the file cannot be read.
        ValueError: its content is not valid constraints.
    """
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else exc
        raise OSError(f"cannot read {str(path)!r}: {reason}") from None
    data = _parse(text, path)
    if not isinstance(data, Mapping):
        raise ValueError(f"{path}: the top level must be a mapping with 'applications'")
    known = {"cores", "target", "power", "applications"}
    if set(data) - known:
        raise ValueError(f"{path}: unknown keys {sorted(set(data) - known)}; "
                         f"valid keys: {sorted(known)}")
    apps = data.get("applications")
    if not apps:
        raise ValueError(f"{path}: 'applications' is missing or empty")
    constraints = [Constraint.from_dict(str(name), spec or {}) for name, spec in _items(apps)]
    total = cores if cores is not None else data.get("cores")
    if total is None:
        raise ValueError(f"{path}: no 'cores' in the file and no --cores given")
    if isinstance(total, bool) or not isinstance(total, int) or total < 0:
        raise ValueError(f"cores={total!r} must be an integer >= 0")
    name = target or data.get("target") or "throughput"
    get_target(str(name))
    power = PowerModel(**data.get("power", {}))
    return constraints, total, str(name), power


def _parse(text: str, path: Path) -> Any:
    if path.suffix.lower() == ".json":
        try:
            return json.loads(text)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path}: invalid JSON: {exc}") from None
    import yaml

    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:  # one line: where, and what went wrong there
        mark, problem = getattr(exc, "problem_mark", None), getattr(exc, "problem", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise ValueError(f"{path}: invalid YAML{where}: {problem or exc}") from None


def _items(apps: Any) -> list[tuple[str, Mapping[str, Any]]]:
    if isinstance(apps, Mapping):
        return list(apps.items())
    if isinstance(apps, Sequence) and not isinstance(apps, str):
        out: list[tuple[str, Mapping[str, Any]]] = []
        for entry in apps:
            if not isinstance(entry, Mapping) or "name" not in entry:
                raise ValueError(f"application entry {entry!r} needs a 'name'")
            out.append((str(entry["name"]), {k: v for k, v in entry.items() if k != "name"}))
        return out
    raise ValueError("'applications' must be a mapping of name to constraints, or a list")


def run(args: argparse.Namespace) -> int:
    """Print the split, per-application throughput, and the totals against the static split.

    Returns:
        0; or, after one line on stderr, 1 if the file cannot be read (a failure, as for the
        other commands) and 2 if its constraints are invalid.
    """
    try:
        constraints, total, target, power = load_file(args.file, args.cores, args.target)
        best = optimize(constraints, total, target, power)
        static = static_split(constraints, total)
    except OSError as exc:
        print(f"steersman allocate: error: {exc}", file=sys.stderr)
        return 1
    except (ValueError, TypeError) as exc:
        print(f"steersman allocate: error: {exc}", file=sys.stderr)
        return 2
    print(render(constraints, total, target, power, best, static))
    return 0


def render(
    constraints: Sequence[Constraint], total: int, target: str, power: PowerModel,
    best: Distribution, static: Distribution,
) -> str:
    """The table printed by `run`."""
    timed = all(c.workload is not None for c in constraints)
    thr, thr0 = throughput_of(constraints, best), throughput_of(constraints, static)
    fin, fin0 = (finish_times(constraints, best), finish_times(constraints, static)) if timed \
        else ({}, {})
    width = max(11, *(len(c.name) for c in constraints))
    head = f"{'application':<{width}} {'min':>5} {'max':>5} {'share':>6} {'throughput':>11}"
    head += f" {'static':>6} {'static thr.':>11}"
    head += f" {'finish s':>10} {'static s':>10}" if timed else ""
    lines = [f"target: {target}   cores: {total}", head, "-" * len(head)]
    for c in constraints:
        row = f"{c.name:<{width}} {c.min:>5} {'-' if c.max is None else c.max:>5} "
        row += f"{best[c.name]:>6} {thr[c.name]:>11.4g} {static[c.name]:>6} {thr0[c.name]:>11.4g}"
        row += f" {_num(fin[c.name]):>10} {_num(fin0[c.name]):>10}" if timed else ""
        lines.append(row)
    lines.append("-" * len(head))
    tot, tot0 = sum(thr.values()), sum(thr0.values())
    row = f"{'total':<{width}} {'':>5} {'':>5} {sum(best.values()):>6} {tot:>11.4g} "
    row += f"{sum(static.values()):>6} {tot0:>11.4g}"
    row += f" {_num(max(fin.values())):>10} {_num(max(fin0.values())):>10}" if timed else ""
    lines.append(row)
    if tot0 > 0:
        lines.append(f"throughput vs static split: {tot / tot0:.3f}x")
    if timed:
        lines.append(f"makespan vs static split: {_num(max(fin.values()))} s vs "
                     f"{_num(max(fin0.values()))} s")
        if target == "energy":
            joules = energy_of(constraints, best, total, power)
            joules0 = energy_of(constraints, static, total, power)
            lines.append(f"energy vs static split: {_num(joules)} J vs {_num(joules0)} J")
    return "\n".join(lines)


def _num(x: float) -> str:
    return "inf" if math.isinf(x) else f"{x:.4g}"


def main(argv: Sequence[str] | None = None) -> int:
    """Run as ``python -m steersman.allocation.cli FILE``, as ``steersman allocate FILE`` does."""
    parser = argparse.ArgumentParser(prog="steersman allocate", description=__doc__)
    configure_parser(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
