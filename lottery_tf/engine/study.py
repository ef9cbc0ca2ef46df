"""A whole study as a graph of trainings: what ``--executor=ray`` schedules and ``--dry_run`` sizes.

One node per training: a main-line level (level L after level L-1), a branch at
a level, a copy an analysis trains, an analysis's measurement after its copies
(each branch type says how it splits, :attr:`lottery_tf.engine.branches.registry.BranchType.units`).
A branch node waits for the main-line levels that write the files it reads:
``level_LL/main/masks.npz`` is written when main level LL-1 ends, the rewind
point during main level 0, ``level_LL/main/final_weights.npz`` when main level
LL ends. Replicates and the runs of a ``--sweep_rewind_steps`` are independent.

Every node runs the level code the local executor runs (:func:`run_training`);
only the order differs, so with ``--deterministic`` the files are the same.
"""

from __future__ import annotations

import dataclasses
import heapq
import os
import re

from lottery_tf.engine.config import ExperimentConfig
from lottery_tf.engine.run_dir import is_done, replicate_dir, replicates

SPEEDUP_WORKERS = (1, 2, 4, 8, 16)
_MASKS = re.compile(r"level_(\d+)/main/masks\.npz$")
_FINAL = re.compile(r"level_(\d+)/main/final_weights\.npz$")
_MAIN_ZERO = ("rewind_point.npz", "rewind_optimizer.npz")
_ONE_LEVEL = re.compile(r"level_(\d+)/([^/]+)")  # a one-level branch's key: its folder under level_LL/


@dataclasses.dataclass(frozen=True)
class Training:
    """One node of the study graph.

    Args:
        run: Index of the run (the sweep's rewind steps, else 0) in the invocation's configs.
        replicate: The replicate.
        key: The unit's key within the replicate (``main/level_03``, ``level_02/reinit``, ...).
        level: Its level.
        steps: Training steps (0 for a measurement).
        deps: Ids of the nodes it waits for.
    """

    run: int
    replicate: int
    key: str
    level: int
    steps: int
    deps: tuple = ()

    @property
    def id(self) -> str:
        return f"{self.run}/{self.replicate}/{self.key}"


def main_key(level: int) -> str:
    return f"main/level_{level:02d}"


def producer_level(relative: str, config: ExperimentConfig) -> int:
    """The main-line level whose task writes ``relative`` (a file of the replicate folder)."""
    relative = relative.replace("\\", "/")
    masks = _MASKS.search(relative)
    if masks:
        return max(int(masks.group(1)) - 1, 0)
    final = _FINAL.search(relative)
    if final:
        return int(final.group(1))
    if relative in _MAIN_ZERO:
        return 0
    return config.pruning.levels  # anything else: after the whole main line


def units(config: ExperimentConfig) -> list:
    """Every branch unit of one replicate, in the order the local executor runs them."""
    from lottery_tf.engine.branches.registry import branch_units

    return [unit for name in config.branches.names for unit in branch_units(config, name)]


def plan(configs) -> list[Training]:
    """The study's nodes for every config (sweep run) and replicate, parents before children."""
    nodes = []
    for run, config in enumerate(configs):
        t, p = config.training, config.pruning
        for replicate in replicates(config):

            def node_id(key, run=run, replicate=replicate):
                return f"{run}/{replicate}/{key}"

            for level in range(p.levels + 1):
                steps = t.iterations if level == 0 else t.iterations - p.rewind_step
                deps = (node_id(main_key(level - 1)),) if level else ()
                nodes.append(Training(run, replicate, main_key(level), level, steps, deps))
            for unit in units(config):
                # The main line is a chain: waiting for the last level it reads waits for the others.
                last = max((producer_level(relative, config) for relative in unit.needs), default=0)
                deps = (node_id(main_key(last)), *(node_id(key) for key in unit.after))
                nodes.append(Training(run, replicate, unit.key, unit.level, unit.steps, deps))
    ids = [n.id for n in nodes]
    if len(set(ids)) != len(ids):
        raise AssertionError(f"two units share a key: {sorted(i for i in ids if ids.count(i) > 1)[:2]}")
    return nodes


def least_trainings(configs) -> int:
    """The fewest nodes :func:`plan` can give, without the branch types (whose modules import TensorFlow).

    Every main-line level is one training, and every requested branch at least one unit (a lineage such as
    ``lr_rewind`` trains all its levels in one).
    """
    return sum(len(replicates(c)) * (c.pruning.levels + 1 + len(c.branches.names)) for c in configs)


def known_done(configs, nodes) -> set[str]:
    """Ids of the nodes whose training is done in the run folder (a complete ``metrics.json``).

    Judged for main-line levels and one-level branches (``level_LL/<folder>``); a lineage's or an
    analysis's units are left to their tasks, which find out themselves (counted as not done).
    """
    done = set()
    for node in nodes:
        folder = replicate_dir(configs[node.run], node.replicate)
        one_level = _ONE_LEVEL.fullmatch(node.key)
        if node.key.startswith("main/level_"):
            finished = is_done(folder, node.level, "main")
        elif one_level:
            finished = is_done(folder, int(one_level.group(1)), one_level.group(2))
        else:
            continue
        if finished:
            done.add(node.id)
    return done


def children_of(nodes) -> dict[str, list]:
    """Per node id: the ids of the nodes (among ``nodes``) that wait for it; dependencies outside are ignored."""
    children: dict[str, list] = {n.id: [] for n in nodes}
    for n in nodes:
        for dep in n.deps:
            if dep in children:
                children[dep].append(n.id)
    return children


def remaining_path(nodes) -> dict[str, int]:
    """Per node: the steps of the longest chain from its start to the end of the study (itself included).

    ``nodes`` may be part of a graph (those not yet finished): dependencies outside it are done.
    """
    children = children_of(nodes)
    steps = {n.id: n.steps for n in nodes}
    longest: dict[str, int] = {}
    for n in reversed(nodes):  # children come after parents
        longest[n.id] = steps[n.id] + max((longest[c] for c in children[n.id]), default=0)
    return longest


class Schedule:
    """Which trainings start when: the longest remaining path first, never more than ``slots`` at once.

    The one schedule of a study: :func:`makespan` (what ``--dry_run`` promises) and the Ray driver
    (:func:`lottery_tf.engine.ray_executor.run_study`) both follow it. The driver hands Ray no more
    trainings than it has slots for, so a training Ray starts is always the one with the longest
    remaining path among those ready (Ray itself runs what it was given in submission order).

    Args:
        nodes: The study's nodes (:func:`plan`), or what is left of them.
        slots: Trainings at once.

    Example:

    >>> schedule = Schedule(plan(configs), slots=4)  # doctest: +SKIP
    >>> for node in schedule.start(): ...  # doctest: +SKIP
    >>> schedule.finish(node.id)  # then start() again  # doctest: +SKIP
    """

    def __init__(self, nodes, slots: int):
        if slots < 1:
            raise ValueError(f"slots must be at least 1, got {slots}")
        self.slots = slots
        self.priority = remaining_path(nodes)
        self._by_id = {n.id: n for n in nodes}
        self._order = {n.id: i for i, n in enumerate(nodes)}  # ties: the order of the plan (parents first)
        self._children = children_of(nodes)
        self.waiting = {n.id: {d for d in n.deps if d in self._by_id} for n in nodes}
        self._ready: list = []
        self.running: set = set()
        self.finished: set = set()
        for node_id in list(self.waiting):
            self._release(node_id)

    def _release(self, node_id: str) -> None:
        if not self.waiting[node_id]:
            del self.waiting[node_id]
            heapq.heappush(self._ready, (-self.priority[node_id], self._order[node_id], node_id))

    def start(self) -> list:
        """The trainings to start now: the ready ones with the longest remaining paths, up to the free slots."""
        started = []
        while self._ready and len(self.running) < self.slots:
            node_id = heapq.heappop(self._ready)[2]
            self.running.add(node_id)
            started.append(self._by_id[node_id])
        return started

    def finish(self, node_id: str) -> None:
        """``node_id`` ended: its slot is free and the trainings that waited only for it are ready."""
        self.running.discard(node_id)
        self.finished.add(node_id)
        for child in self._children[node_id]:
            if child in self.waiting:
                self.waiting[child].discard(node_id)
                self._release(child)

    @property
    def queued(self) -> int:
        """Trainings not started yet (ready, or waiting for others)."""
        return len(self._ready) + len(self.waiting)

    def done(self) -> bool:
        return not (self._ready or self.waiting or self.running)


def makespan(nodes, workers: int) -> int:
    """Steps until the study ends with ``workers`` trainings at once, on :class:`Schedule`.

    Every step costs the same and a training starts the moment its inputs exist: the ideal the
    executor can approach, without start-up costs or trainings of unequal speed.
    """
    schedule = Schedule(nodes, workers)
    steps = {n.id: n.steps for n in nodes}
    running: list = []  # (end time, order, id)
    now = 0
    while not schedule.done():
        for node in schedule.start():
            heapq.heappush(running, (now + steps[node.id], schedule._order[node.id], node.id))
        now, _, node_id = heapq.heappop(running)
        schedule.finish(node_id)
    return now


def size(nodes) -> dict:
    """The graph's size: trainings, total steps, the critical path, the ideal speed-up per number of workers."""
    total = sum(n.steps for n in nodes)
    critical = max(remaining_path(nodes).values(), default=0)
    speedups = {w: (total / makespan(nodes, w) if total else 1.0) for w in SPEEDUP_WORKERS}
    return {
        "trainings": sum(1 for n in nodes if n.steps),
        "measurements": sum(1 for n in nodes if not n.steps),
        "total_steps": total,
        "critical_path_steps": critical,
        "bound": total / critical if critical else 1.0,
        "speedups": speedups,
    }


def count(number: int, word: str) -> str:
    """``number`` and ``word``, plural unless one: '1 task', '34 tasks'."""
    return f"{number:,} {word}{'' if number == 1 else 's'}"


def seconds_since_start() -> float | None:
    """Seconds since this process started (Python's start-up and imports included), from /proc; None elsewhere."""
    try:
        with open("/proc/self/stat") as handle:
            fields = handle.read().rsplit(")", 1)[1].split()
        with open("/proc/uptime") as handle:
            uptime = float(handle.read().split()[0])
        return uptime - int(fields[19]) / os.sysconf("SC_CLK_TCK")  # field 22 of stat: start time in ticks
    except (OSError, ValueError, IndexError):
        return None


def format_duration(seconds: float) -> str:
    """``1h 02m 03s`` or ``2m 03s``: how the command line prints wall times and ETAs."""
    minutes, seconds = divmod(int(round(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h {minutes:02d}m {seconds:02d}s" if hours else f"{minutes}m {seconds:02d}s"


def format_size(graph: dict) -> str:
    """The lines ``--dry_run`` prints."""
    speedups = "  ".join(f"{w}: {s:.2f}x" for w, s in graph["speedups"].items())
    besides = f" ({graph['measurements']} analysis measurements besides)" if graph["measurements"] else ""
    return (
        f"study graph: {graph['trainings']} trainings{besides}, "
        f"{graph['total_steps']:,} training steps, critical path {graph['critical_path_steps']:,} steps "
        f"(no schedule beats {graph['bound']:.2f}x)\n"
        f"ideal speed-up with N trainings at once: {speedups}\n"
    )


def run_training(ctx, key: str) -> bool:
    """Runs one node of a replicate (``ctx``: :class:`lottery_tf.engine.levels.Context`) in this process.

    A main-line level trains after the levels before it (their files); a branch unit checks (and
    rebuilds if damaged) the main-line files it reads first.

    Returns:
        Whether it trained.

    Raises:
        KeyError: If no unit of this study has ``key``.
    """
    from lottery_tf.engine import experiment

    if key.startswith("main/level_"):
        return experiment.run_main_line(ctx, last=int(key.rsplit("_", 1)[1]))
    from lottery_tf.engine.branches.registry import branch_units

    for name in ctx.config.branches.names:
        for unit in branch_units(ctx.config, name):
            if unit.key == key:
                experiment.ensure_branch_inputs(ctx, [name], [unit.level])
                return bool(unit.run(ctx))
    raise KeyError(key)
