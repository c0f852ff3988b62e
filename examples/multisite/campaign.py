"""Multi-site active learning: simulate on one site, train and infer on another, all at once.

Six agents steer the search for molecules with a high ionisation potential: a priority buffer
is filled from the ensemble's inference results; simulations start as soon as a simulation slot
is free; every model of the ensemble retrains as soon as enough new simulations completed; and
inference starts as soon as training completed. Simulations (GFN2-xTB) run on one site, training
and inference on the other: two Parsl executors on this machine, or two Globus Compute
endpoints with ``--simulation-endpoint`` and ``--ml-endpoint``. Large values (models, inputs)
can travel through ProxyStore, per topic.

Run ``python examples/multisite/campaign.py --help``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time
import uuid
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

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
from _shared.runlog import new_run_dir, read_results  # noqa: E402

from steersman import (  # noqa: E402
    BaseThinker,
    PipeQueues,
    PythonMethod,
    ResourceCounter,
    Result,
    event_responder,
    result_processor,
    task_submitter,
)

SIMULATE, TRAIN, INFER = "simulate", "train", "infer"
SIM_POOL, ML_POOL = "simulation", "ml"  # slot pools, one per site
SITE_OF_TOPIC = {SIMULATE: SIM_POOL, TRAIN: ML_POOL, INFER: ML_POOL}
LABELS = {SIMULATE: "Simulation (xTB IP)", TRAIN: "Training", INFER: "Inference"}


class ActiveLearningThinker(BaseThinker):
    """The six agents of the multi-site policy, sharing a priority buffer and the ensemble.

    Args:
        queues: Client side of the queues.
        counter: Slots of the ``simulation`` and ``ml`` pools (one pool per site).
        molecules: The search space, as SMILES.
        search_count: Simulations to run.
        buffer_size: Molecules kept ready for simulation.
        retrain_after: New simulation results that trigger retraining.
        num_models: Models in the ensemble.
        refill_while_training: Whether the buffer is refilled while models retrain.
        kappa: Weight of the ensemble's spread in the ranking (mean + kappa * std).
        n_conformers: Conformers each simulation screens.
        seed: Seed of the initial order and the ensemble.
        run_dir: Where the thinker records its parameters, results and slots.
        progress: The library's progress display: None (auto), True, 'rich', 'tqdm' or False.
    """

    def __init__(self, queues: PipeQueues, counter: ResourceCounter, molecules: list[str],
                 search_count: int, buffer_size: int, retrain_after: int, num_models: int,
                 refill_while_training: bool = True, kappa: float = 1.0, n_conformers: int = 8,
                 seed: int = 0, run_dir: Path | None = None,
                 progress: bool | str | None = None):
        super().__init__(queues, counter, run_dir=run_dir, progress=progress)
        self.search_count = min(search_count, len(molecules))
        self.buffer_size = buffer_size
        self.retrain_after = retrain_after
        self.num_models = num_models
        self.refill_while_training = refill_while_training
        self.kappa = kappa
        self.n_conformers = n_conformers
        self.seed = seed
        order = np.random.default_rng(seed).permutation(len(molecules))
        self.ranked: list[str] = [molecules[i] for i in order]  # best first; random at start
        self.buffer: list[str] = []
        self.taken: set[str] = set()  # sent to simulation already
        self.buffer_cond = threading.Condition()
        self.done.add_listener(self._wake_launcher)
        self.database: dict[str, float] = {}
        self.received = 0
        self.new_results = 0
        self.db_lock = threading.Lock()
        self.learning = False  # models retraining or inferring
        self.start_training = threading.Event()
        self.start_inference = threading.Event()
        self.models: list[Any] = []
        self.predictions: list[np.ndarray] = []
        self.candidates: list[str] = []
        self.expected = 0  # inference results awaited in the round in progress
        # Learning rounds are named "<session>-<n>": a training or inference result of another
        # session (replayed on resume, or resent and run again) belongs to no round in progress.
        self.session = uuid.uuid4().hex[:12]
        self.round = 0
        self.train_round: str | None = None
        self.infer_round: str | None = None
        self.ml_lock = threading.Lock()
        self.rounds: list[dict[str, Any]] = []
        if self.campaign is not None and self.resumed:  # simulations the journal will resend
            self.taken.update(r.args[0] for r in self.campaign.pending if r.topic == SIMULATE)
        self._refill()

    # --- the buffer ---------------------------------------------------------------------------

    def _refill(self) -> None:
        """Top the buffer up from the ranking, best first (agents hold no other lock)."""
        with self.buffer_cond:
            if self.learning and not self.refill_while_training:
                return
            while len(self.buffer) < self.buffer_size and self.ranked:
                smiles = self.ranked.pop(0)
                if smiles not in self.taken and smiles not in self.buffer:
                    self.buffer.append(smiles)
            self.buffer_cond.notify_all()

    def _wake_launcher(self) -> None:
        with self.buffer_cond:
            self.buffer_cond.notify_all()

    # --- agents 1 and 2: simulation -----------------------------------------------------------

    @task_submitter(task_type=SIM_POOL, n_slots=1)
    def launch_simulation(self) -> None:
        """Simulate the best molecule of the buffer as soon as a simulation slot is free."""
        with self.buffer_cond:
            self.buffer_cond.wait_for(lambda: self.buffer or self.done.is_set()
                                      or len(self.taken) >= self.search_count)
            smiles = None
            if self.buffer and not self.done.is_set() and len(self.taken) < self.search_count:
                smiles = self.buffer.pop(0)
                self.taken.add(smiles)
        if smiles is None:  # every simulation is sent: free the slot, wait for the end
            self.rec.release(SIM_POOL, 1)  # type: ignore[union-attr]
            self.done.wait()
            return
        self.queues.send_inputs(smiles, self.n_conformers, method="compute_vertical",
                                topic=SIMULATE)
        self._refill()

    @result_processor(topic=SIMULATE)
    def receive_simulation(self, result: Result) -> None:
        """Store the result; retrain the ensemble once enough new results arrived."""
        self.rec.release(SIM_POOL, 1)  # type: ignore[union-attr]
        with self.buffer_cond:  # on replay: the molecule was simulated in an earlier session
            self.taken.add(result.args[0])
            stale = result.args[0] in self.buffer
            if stale:
                self.buffer.remove(result.args[0])
        if stale:
            self._refill()
        with self.db_lock:
            self.received += 1
            if result.success:
                self.database[result.args[0]] = float(result.value)
                self.new_results += 1
            trigger = (self.new_results >= self.retrain_after and not self.learning
                       and len(self.database) >= 2)
            if trigger:
                self.learning = True
            finished = self.received >= self.search_count
        if finished:
            self.done.set()
        elif trigger:
            self.start_training.set()

    # --- agents 3 and 4: training -------------------------------------------------------------

    @event_responder(event_name="start_training")
    def launch_training(self) -> None:
        """Send one training task per model of the ensemble, as ML slots free up."""
        with self.db_lock:
            smiles, values = list(self.database), list(self.database.values())
            self.new_results = 0
        with self.ml_lock:
            self.round += 1
            self.train_round, self.models = f"{self.session}-{self.round}", []
            round_id = self.train_round
        for member in range(self.num_models):
            if not self.rec.acquire(ML_POOL, 1, cancel_if=self.done):  # type: ignore[union-attr]
                return
            self.queues.send_inputs(smiles, values, method="train_model",
                                    input_kwargs={"seed": self.seed * 1000 + member,
                                                  "bootstrap_sample": True},
                                    topic=TRAIN, keep_inputs=False,
                                    task_info={"member": member, "n_train": len(smiles),
                                               "round": round_id})

    @result_processor(topic=TRAIN)
    def receive_training(self, result: Result) -> None:
        """Collect the trained models; start inference once the whole ensemble is back."""
        round_id = self._round_of(result)
        with self.ml_lock:
            current = round_id is not None and round_id == self.train_round
        if not current:
            self._restart_learning()
            return
        with self.ml_lock:
            if result.success:
                self.models.append(result.value)
            else:
                self.logger.warning("training failed: %s", result.failure_info)
                self.models.append(None)
            complete = len(self.models) == self.num_models
        if complete:
            self.start_inference.set()

    # --- agents 5 and 6: inference ------------------------------------------------------------

    @event_responder(event_name="start_inference")
    def launch_inference(self) -> None:
        """Send one inference task per trained model over the molecules not yet simulated."""
        with self.buffer_cond:
            candidates = [s for s in [*self.buffer, *self.ranked] if s not in self.taken]
        with self.ml_lock:
            models = [m for m in self.models if m is not None]
            self.candidates, self.predictions = candidates, []
            self.expected = len(models)
            self.infer_round = round_id = self.train_round
        if not models or not candidates:
            self._finish_round()
            return
        for member, model in enumerate(models):
            if not self.rec.acquire(ML_POOL, 1, cancel_if=self.done):  # type: ignore[union-attr]
                return
            self.queues.send_inputs(model, candidates, method="run_model", topic=INFER,
                                    keep_inputs=False,
                                    task_info={"member": member, "round": round_id})

    @result_processor(topic=INFER)
    def receive_inference(self, result: Result) -> None:
        """Gather the predictions; once all are in, re-rank the molecules and refill the buffer."""
        round_id = self._round_of(result)
        with self.ml_lock:
            current = round_id is not None and round_id == self.infer_round and self.expected > 0
        if not current:
            self._restart_learning()
            return
        with self.ml_lock:
            if result.success:
                self.predictions.append(np.asarray(result.value))
            else:
                self.logger.warning("inference failed: %s", result.failure_info)
                self.expected -= 1
            complete = len(self.predictions) >= self.expected
            if not complete:
                return
            stacked = np.array(self.predictions) if self.predictions else None
            candidates = self.candidates
        if stacked is not None:
            score = stacked.mean(axis=0) + self.kappa * stacked.std(axis=0)
            order = [candidates[i] for i in np.argsort(-score)]
            with self.buffer_cond:  # the new ranking replaces the buffer's stale guesses
                self.ranked = [s for s in order if s not in self.taken]
                self.buffer = []
            self.rounds.append({"time": time.time(), "n_train": len(self.database),
                                "n_ranked": len(order), "best_predicted": float(score.max())})
        self._finish_round()

    def _round_of(self, result: Result) -> str | None:
        """The round of this session a learning result belongs to (its ML slot is released).

        None for a result of an earlier session: replayed on resume, or a request of that session
        resent and run again. No slot was taken for it in this session.
        """
        round_id = (result.task_info or {}).get("round")
        if not (isinstance(round_id, str) and round_id.startswith(f"{self.session}-")):
            return None
        self.rec.release(ML_POOL, 1)  # type: ignore[union-attr]
        return round_id

    def _restart_learning(self) -> None:
        """A learning result of an earlier session: retrain on all the data, unless a round runs.

        The models and predictions of a session are not carried over (the processors never see
        the round that sent them), so a resumed campaign starts with a fresh round of its own.
        """
        with self.db_lock:
            start = (not self.learning and len(self.database) >= 2
                     and not self.done.is_set())
            if start:
                self.learning = True
        if start:
            self.start_training.set()

    def _finish_round(self) -> None:
        with self.db_lock:
            self.learning = False
            again = self.new_results >= self.retrain_after and not self.done.is_set()
            if again:
                self.learning = True
        self._refill()
        if again:
            self.start_training.set()


# --- the sites --------------------------------------------------------------------------------


def make_task_server(args: argparse.Namespace, queues: PipeQueues, run_dir: Path) -> Any:
    """Simulation on one site, learning on the other: Globus Compute, Parsl, or local."""
    train = PythonMethod(partial(train_model, n_estimators=args.n_estimators), name="train_model")
    if args.simulation_endpoint or args.ml_endpoint:
        from steersman.task_server.globus import GlobusComputeTaskServer

        if not (args.simulation_endpoint and args.ml_endpoint):
            raise SystemExit("give both --simulation-endpoint and --ml-endpoint")
        return GlobusComputeTaskServer({compute_vertical: args.simulation_endpoint,
                                        train: args.ml_endpoint, run_model: args.ml_endpoint},
                                       queues)
    if args.engine == "local":
        from steersman import LocalTaskServer

        return LocalTaskServer(queues, [compute_vertical, train, run_model], threads=False,
                               num_workers=args.simulate_workers + args.ml_workers)
    from parsl.config import Config
    from parsl.executors import HighThroughputExecutor
    from parsl.providers import LocalProvider

    from steersman.task_server import ParslTaskServer

    # Parsl's workers are fresh processes: they find the example's helpers through PYTHONPATH.
    os.environ["PYTHONPATH"] = os.pathsep.join(
        [str(HERE.parent), *filter(None, [os.environ.get("PYTHONPATH")])])

    def site(label: str, workers: int) -> HighThroughputExecutor:
        return HighThroughputExecutor(
            label=label, address="127.0.0.1", max_workers_per_node=workers, heartbeat_period=2,
            provider=LocalProvider(init_blocks=1, min_blocks=1, max_blocks=1))

    config = Config(executors=[site(SIM_POOL, args.simulate_workers),
                               site(ML_POOL, args.ml_workers)],
                    run_dir=str(run_dir / "parsl"), strategy="none")
    return ParslTaskServer([(compute_vertical, {"executors": [SIM_POOL]}),
                            (train, {"executors": [ML_POOL]}),
                            (run_model, {"executors": [ML_POOL]})], queues, config)


def make_queues(args: argparse.Namespace) -> PipeQueues:
    """The queues, with a ProxyStore store for each topic that asks for one."""
    backends = {SIMULATE: args.simulate_ps_backend, TRAIN: args.train_ps_backend,
                INFER: args.infer_ps_backend}
    if all(b == "none" for b in backends.values()):
        return PipeQueues(topics=[SIMULATE, TRAIN, INFER])
    from steersman.proxy import stores_from_options

    names, thresholds = stores_from_options(backends, args.ps_threshold, args.ps_file_dir,
                                            args.redis_host, args.redis_port)
    return PipeQueues(topics=[SIMULATE, TRAIN, INFER], proxystore_name=names,
                      proxystore_threshold=thresholds)


# --- the report -------------------------------------------------------------------------------


def site_report(run_dir: Path, args: argparse.Namespace) -> dict[str, Any]:
    """Utilisation of each site: busy worker time over (workers x campaign time)."""
    from _shared.plots import task_spans, utilisation

    results = read_results(run_dir / "results.jsonl")
    origin = min(r["timestamp"]["created"] for r in results)
    spans = task_spans(results, origin)
    start, end = min(s.start for s in spans), max(s.end for s in spans)  # engine start-up aside
    workers = {SIM_POOL: args.simulate_workers, ML_POOL: args.ml_workers}
    report: dict[str, Any] = {"makespan_s": end, "first_task_s": start, "sites": {}}
    for site, count in workers.items():
        mine = [s for s in spans if SITE_OF_TOPIC.get(s.kind) == site]
        executors = sorted({str((r.get("worker_info") or {}).get("executor")) for r in results
                            if SITE_OF_TOPIC.get(r["topic"]) == site})
        report["sites"][site] = {
            "workers": count, "tasks": len(mine), "executors": executors,
            "busy_s": sum(s.end - s.start for s in mine),
            "utilisation": utilisation(mine, count, start, end)}
    sims = [r for r in results if r["topic"] == SIMULATE]
    values = [r["value"] for r in sims if r["success"]]
    report["simulations"] = len(sims)
    report["best_ip_ev"] = max(values) if values else None
    report["found"] = sum(v >= args.threshold for v in values)
    report["threshold_ev"] = args.threshold
    return report


def site_figure(run_dir: Path, report: dict[str, Any], path: Path) -> Path:
    """The tasks of each site on its workers, with its utilisation, and the best IP found."""
    from _shared.plots import draw_gantt, plt, task_spans

    results = read_results(run_dir / "results.jsonl")
    origin = min(r["timestamp"]["compute_started"] for r in results
                 if r["timestamp"].get("compute_started"))  # from the first task: start-up aside
    spans = task_spans(results, origin)
    fig, axes = plt.subplots(3, 1, figsize=(10, 6.4), sharex=True,
                             gridspec_kw={"height_ratios": [1, 1.3, 1.3]})
    sims = [r for r in results if r["topic"] == SIMULATE and r["success"]]
    ends = [r["timestamp"]["compute_ended"] - origin for r in sims]
    best = np.maximum.accumulate([r["value"] for r in sims]) if sims else []
    axes[0].step(ends, best, where="post", color="#1f77b4")
    axes[0].axhline(report["threshold_ev"], color="black", linestyle="--", linewidth=1)
    axes[0].set_ylabel("Best IP (eV)")
    axes[0].set_title(f"{report['simulations']} simulations, {report['found']} above "
                      f"{report['threshold_ev']:g} eV (dashed)")
    for ax, site, topics in ((axes[1], SIM_POOL, {SIMULATE}), (axes[2], ML_POOL, {TRAIN, INFER})):
        info = report["sites"][site]
        draw_gantt(ax, [s for s in spans if s.kind in topics],
                   {k: v for k, v in LABELS.items() if k in topics})
        ax.set_title(f"{site} site (executor: {', '.join(info['executors'])}): "
                     f"{info['workers']} worker(s), {100 * info['utilisation']:.0f}% busy",
                     fontsize=10)
    axes[2].set_xlabel("Time since the first task started (s)")
    axes[2].set_xlim(0, max(s.end for s in spans))
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


# --- the command line -------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="multisite", description=__doc__.split("\n\n")[0],
        formatter_class=HelpFormatter)
    parser.add_argument("--run-dir", type=Path, default=None,
                        help="directory of the run (default: runs/multisite-<time>)")
    group = parser.add_argument_group("problem")
    group.add_argument("--search-space", type=Path,
                       default=HERE.parent / "molecular_design" / "data" / "qm9-subset.csv",
                       help="CSV with a 'smiles' column")
    group.add_argument("--max-molecules", type=int, default=None,
                       help="use a random sample of this many molecules")
    group.add_argument("--max-atoms", type=int, default=None,
                       help="only molecules with at most this many atoms")
    group.add_argument("--search-count", type=int, default=96, help="simulations to run")
    group.add_argument("--conformers", type=int, default=16,
                       help="RDKit conformers screened with xTB per molecule")
    group.add_argument("--threshold", type=float, default=14.0,
                       help="IP (eV) counted as a hit in the report")
    group.add_argument("--seed", type=int, default=0, help="seed of the initial order")
    group = parser.add_argument_group("policy")
    group.add_argument("--buffer-size", type=int, default=8,
                       help="molecules kept ready in the priority buffer")
    group.add_argument("--retrain-after", type=int, default=16,
                       help="new simulations that trigger retraining")
    group.add_argument("--no-refill-while-training", dest="refill_while_training",
                       action="store_false", help="do not refill the buffer while models retrain")
    group.add_argument("--num-models", type=int, default=4, help="models in the ensemble")
    group.add_argument("--n-estimators", type=int, default=32, help="trees per model")
    group.add_argument("--kappa", type=float, default=1.0,
                       help="rank by mean + kappa * std of the ensemble")
    group = parser.add_argument_group("sites")
    group.add_argument("--simulate-workers", type=int, default=2,
                       help="workers of the simulation site")
    group.add_argument("--ml-workers", type=int, default=1,
                       help="workers of the training and inference site")
    group.add_argument("--engine", choices=["parsl", "local"], default="parsl",
                       help="parsl: one HighThroughputExecutor per site; local: one process pool")
    group.add_argument("--simulation-endpoint", default=None,
                       help="Globus Compute endpoint id of the simulation site")
    group.add_argument("--ml-endpoint", default=None,
                       help="Globus Compute endpoint id of the learning site")
    group = parser.add_argument_group("ProxyStore")
    for topic in (SIMULATE, INFER, TRAIN):
        group.add_argument(f"--{topic}-ps-backend", choices=["none", "file", "redis"],
                           default="none", help=f"store for large values of {topic} tasks")
    group.add_argument("--ps-threshold", type=int, default=500_000,
                       help="bytes above which values are proxied")
    group.add_argument("--ps-file-dir", type=Path, default=None,
                       help="directory of the file store (default: RUN_DIR/proxystore)")
    group.add_argument("--redis-host", default="localhost", help="Redis of the redis store")
    group.add_argument("--redis-port", type=int, default=6379, help="port of that Redis")
    parser.add_argument("--figure", type=Path, default=None, help="also write the figure here")
    parser.add_argument("--progress", choices=["auto", "rich", "tqdm", "off"], default="auto",
                        help="progress display (auto: rich on a terminal)")
    args = parser.parse_args(argv)
    for name in ("search_count", "buffer_size", "retrain_after", "num_models", "n_estimators",
                 "simulate_workers", "ml_workers", "conformers"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be positive")
    for name in ("max_molecules", "max_atoms"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be positive")
    if not args.search_space.is_file():
        parser.error(f"--search-space {args.search_space}: no such file")
    return args


def main(argv: list[str] | None = None) -> int:
    """Run the campaign; write the traces, the per-site report and its figure."""
    args = parse_args(argv)
    import pandas as pd

    frame = pd.read_csv(args.search_space)
    if args.max_atoms is not None:
        frame = frame[frame["n_atoms"] <= args.max_atoms]
    if args.max_molecules is not None and args.max_molecules < len(frame):
        frame = frame.sample(n=args.max_molecules, random_state=args.seed)
    molecules = frame["smiles"].tolist()
    check_search_space(molecules, args)
    run_dir = new_run_dir("multisite", args.run_dir)
    if args.ps_file_dir is None:
        args.ps_file_dir = run_dir / "proxystore"
    preload()

    queues = make_queues(args)
    server = make_task_server(args, queues, run_dir)
    counter = ResourceCounter(args.simulate_workers + args.ml_workers, [SIM_POOL, ML_POOL])
    counter.reallocate(None, SIM_POOL, args.simulate_workers)
    counter.reallocate(None, ML_POOL, args.ml_workers)
    thinker = ActiveLearningThinker(
        queues, counter, molecules, args.search_count, args.buffer_size, args.retrain_after,
        args.num_models, args.refill_while_training, args.kappa, args.conformers, args.seed,
        run_dir=run_dir, progress=None if args.progress == "auto" else
        (False if args.progress == "off" else args.progress))
    thinker.save_params(**{**vars(args), "goal": "max", "value_topic": SIMULATE})
    print(f"{len(molecules)} molecules; {args.search_count} simulations on "
          f"{args.simulate_workers} simulation worker(s), training and inference on "
          f"{args.ml_workers} ML worker(s)\nrun directory: {run_dir}", flush=True)
    with server:
        thinker.run()

    report = site_report(run_dir, args)
    report["learning_rounds"] = len(thinker.rounds)
    (run_dir / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    figure = site_figure(run_dir, report, run_dir / "multisite.png")
    if args.figure is not None:
        args.figure.parent.mkdir(parents=True, exist_ok=True)
        args.figure.write_bytes(figure.read_bytes())
    print(f"{report['simulations']} simulations, {report['found']} molecules with IP > "
          f"{args.threshold:g} eV, best {report['best_ip_ev']:.2f} eV, "
          f"{len(thinker.rounds)} learning rounds in {report['makespan_s']:.1f} s "
          f"(first task after {report['first_task_s']:.1f} s of start-up)")
    for site, info in report["sites"].items():
        print(f"site {site:>10}: {info['workers']} workers, {info['tasks']} tasks, "
              f"{100 * info['utilisation']:.0f}% busy")
    print(f"report: {run_dir / 'report.json'}\nfigure: {figure}"
          + (f" (copied to {args.figure})" if args.figure else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
