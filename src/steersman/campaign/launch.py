"""Run a campaign file, and resume it later from its run directory.

A campaign is a Python file, or a directory holding ``campaign.py``, that defines
``main(argv: list[str] | None = None) -> int`` and accepts ``--run-dir DIR``. ``run_campaign``
calls it and records the file and arguments in the run directory's params.json (through the
thinker); ``resume_campaign`` calls it again with the recorded arguments and the same run dir.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

from steersman.campaign.inspection import status
from steersman.campaign.rundir import Launch, read_params, set_launch

Main = Callable[[list[str] | None], int | None]
#: Where `steersman run NAME` also looks for campaigns, relative to the working directory.
EXAMPLES = Path("examples")


def find_campaign(target: str) -> tuple[str, Path | None]:
    """Where the campaign named by `target` lives: (what to record, the file to load).

    The file is None when `target` is an importable module name.

    Raises:
        ValueError: If `target` names no campaign (the message lists the examples found).
    """
    path = Path(target).expanduser()
    candidates = [path] if path.exists() else []
    if not candidates and not path.is_absolute() and os.sep not in target:
        candidates = [p for p in (EXAMPLES / target, EXAMPLES / f"{target}.py") if p.exists()]
    if candidates:
        found = candidates[0].resolve()
        file = found / "campaign.py" if found.is_dir() else found
        if not file.is_file():
            raise ValueError(f"directory {str(found)!r} holds no campaign.py")
        if file.suffix != ".py":
            raise ValueError(f"campaign {str(found)!r} is not a Python file (.py)")
        return str(found), file
    if target.replace(".", "").replace("_", "").isalnum() and not target.endswith(".py"):
        try:
            if importlib.util.find_spec(target) is not None:
                return target, None
        except (ImportError, ValueError):
            pass
    raise ValueError(f"no campaign {target!r}: give a Python file, a directory holding "
                     f"campaign.py, or a module name{_examples_hint()}")


def load_main(target: str) -> tuple[str, Main]:
    """Import the campaign named by `target`; returns (what to record, its ``main``)."""
    recorded, file = find_campaign(target)
    module = _import_file(file) if file is not None else importlib.import_module(recorded)
    main = getattr(module, "main", None)
    if not callable(main):
        raise ValueError(f"campaign {recorded!r} defines no main(argv) function")
    return recorded, main


def run_campaign(target: str, args: list[str]) -> int:
    """Call the campaign's ``main(args)``, recording how it was launched; returns its code."""
    recorded, main = load_main(target)
    return call(main, Launch(recorded, list(args), "run"))


def resume_campaign(run_dir: str | os.PathLike[str], force: bool = False) -> int:
    """Run the campaign of `run_dir` again with its recorded arguments and the same run dir."""
    launch = prepare_resume(run_dir, force)
    _, main = load_main(launch.path)
    return call(main, launch)


def prepare_resume(run_dir: str | os.PathLike[str], force: bool = False) -> Launch:
    """How to resume the campaign of `run_dir`: its file and arguments, with the run dir.

    Raises:
        ValueError: If the campaign is alive, finished (unless `force`), or was not launched
            by ``steersman run``.
    """
    info = status(run_dir, last=0)
    path = Path(info["run_dir"])
    if info["alive"]:
        holder = info.get("holder") or {}
        raise ValueError(f"the campaign in {str(path)!r} is still running (pid "
                         f"{holder.get('pid', '?')} on {holder.get('host', '?')})")
    if info["state"] == "finished" and not force:
        raise ValueError(f"the campaign in {str(path)!r} finished; nothing to resume "
                         "(--force runs it again on the same run dir)")
    recorded = read_params(path).get("campaign")
    if not isinstance(recorded, dict) or "path" not in recorded:
        raise ValueError(f"{str(path)!r} was not started by 'steersman run': resume it by "
                         f"running the campaign again with --run-dir {path}")
    args = with_run_dir([str(a) for a in recorded.get("args", [])], path)
    return Launch(str(recorded["path"]), args, "resume")


def with_run_dir(args: list[str], run_dir: Path) -> list[str]:
    """`args` with any ``--run-dir`` option replaced by ``--run-dir run_dir``."""
    out: list[str] = []
    skip = False
    for arg in args:
        if skip:
            skip = False
        elif arg == "--run-dir":
            skip = True
        elif not arg.startswith("--run-dir="):
            out.append(arg)
    return [*out, "--run-dir", str(run_dir)]


def call(main: Main, launch: Launch) -> int:
    """Call a campaign's main with the launch recorded for its thinkers; returns its code."""
    set_launch(launch)
    try:
        code = main(launch.args)
    finally:
        set_launch(None)
    return int(code or 0)


def _import_file(file: Path) -> ModuleType:
    name = f"steersman_campaign_{file.parent.name}_{file.stem}".replace("-", "_")
    spec = importlib.util.spec_from_file_location(name, file)
    if spec is None or spec.loader is None:
        raise ValueError(f"cannot import {str(file)!r}")
    module = importlib.util.module_from_spec(spec)
    folder = str(file.parent)
    if folder not in sys.path:
        sys.path.insert(0, folder)  # so the campaign imports its sibling modules
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def _examples_hint() -> str:
    if not EXAMPLES.is_dir():
        return ""
    names = sorted(p.stem if p.is_file() else p.name for p in EXAMPLES.iterdir()
                   if (p.is_dir() and (p / "campaign.py").exists())
                   or (p.suffix == ".py" and not p.name.startswith("_")))
    return f"; examples here: {', '.join(names)}" if names else ""
