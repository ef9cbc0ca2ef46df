"""The Ray driver's schedule on a simulated cluster: wall time against the dry run's bound.

For each study (a committed flagfile) and each number of slots, a local Ray instance with that many logical
CPUs runs the study's graph (:func:`lottery_tf.engine.study.plan`) with trainings that only sleep their step
count scaled down (measurements sleep nothing), under two policies:

* ``all ready`` (lottery_tf before issue 29): every training whose inputs exist is handed to Ray at once,
  longest remaining path first; Ray starts them in the order it was given them as slots free;
* ``schedule`` (now): :class:`lottery_tf.engine.study.Schedule`, the driver's and the dry run's schedule,
  hands Ray no more trainings than it has slots, always the longest remaining path first.

The speed-up is the study's total (scaled) sleep over the wall time; the dry run's ideal speed-up with N
trainings at once is its bound. Ray's task overhead, not the schedule, is what remains between them.

    python tools/simulate_cluster.py [--out=results/ray/simulated_cluster.md] [--seconds=8]
"""

import argparse
import os
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

STUDIES = (
    "lenet300_fashion_mnist_baselines.flags",
    "lenet300_fashion_mnist_instability.flags",
    "lenet300_fashion_mnist_rewind_sweep.flags",
    "fashion_mnist_resnet8_instability.flags",
)
SLOTS = (4, 8, 16)


def nodes_of(flagfile: str):
    from lottery_tf import main as cli
    from lottery_tf.engine import study

    cli.FLAGS.unparse_flags()
    cli.FLAGS(["lottery_tf.main", f"--flagfile={os.path.join(REPO, 'flags', flagfile)}", "--executor=ray"])
    return study.plan(cli.configs_from_flags())


def _sleep(seconds: float) -> None:
    """A training that only takes its time."""
    time.sleep(seconds)


def _all_ready(ray, sleep, nodes, scale):
    """Every ready training handed to Ray at once (the driver before issue 29)."""
    from lottery_tf.engine import study

    priority = study.remaining_path(nodes)
    waiting = {n.id: set(n.deps) for n in nodes}
    children = study.children_of(nodes)
    steps = {n.id: n.steps for n in nodes}
    in_flight = {}

    def submit():
        for node_id in sorted((i for i, d in waiting.items() if not d), key=lambda i: -priority[i]):
            del waiting[node_id]
            in_flight[sleep.remote(steps[node_id] * scale)] = node_id

    submit()
    while in_flight:
        done, _ = ray.wait(list(in_flight), num_returns=1)
        node_id = in_flight.pop(done[0])
        for child in children[node_id]:
            waiting[child].discard(node_id)
        submit()


def _schedule(ray, sleep, nodes, scale, slots):
    """The driver now: :class:`lottery_tf.engine.study.Schedule`."""
    from lottery_tf.engine import study

    schedule = study.Schedule(nodes, slots)
    in_flight = {}
    while not schedule.done():
        for node in schedule.start():
            in_flight[sleep.remote(node.steps * scale)] = node.id
        done, _ = ray.wait(list(in_flight), num_returns=1)
        schedule.finish(in_flight.pop(done[0]))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=os.path.join(REPO, "results", "ray", "simulated_cluster.md"))
    parser.add_argument("--seconds", type=float, default=8.0, help="the ideal makespan each simulation is scaled to")
    parser.add_argument("--studies", default=",".join(STUDIES))
    args = parser.parse_args()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import ray

    from lottery_tf.engine import study

    rows = []
    for flagfile in args.studies.split(","):
        nodes = nodes_of(flagfile)
        total = sum(n.steps for n in nodes)
        for slots in SLOTS:
            bound = total / study.makespan(nodes, slots)
            scale = args.seconds / study.makespan(nodes, slots)  # seconds per step
            ray.init(
                address="local", num_cpus=slots, include_dashboard=False, log_to_driver=False, configure_logging=False
            )
            sleep = ray.remote(num_cpus=1)(_sleep)
            ray.get([sleep.remote(0.5) for _ in range(slots)])  # every worker started before the clock
            measured = {}
            for name in ("all ready", "schedule"):
                started = time.time()
                if name == "all ready":
                    _all_ready(ray, sleep, nodes, scale)
                else:
                    _schedule(ray, sleep, nodes, scale, slots)
                measured[name] = total * scale / (time.time() - started)
            ray.shutdown()
            rows.append((flagfile, len(nodes), slots, bound, measured["all ready"], measured["schedule"]))
            print(
                f"{flagfile} {slots} slots: bound {bound:.2f}x, all ready {measured['all ready']:.2f}x, "
                f"schedule {measured['schedule']:.2f}x",
                flush=True,
            )
    lines = [
        "# The Ray driver's schedule on a simulated cluster",
        "",
        f"Written by `python tools/simulate_cluster.py --seconds={args.seconds:g}` on {os.cpu_count()} cores: a local Ray "
        "instance with N logical CPUs runs each study's graph with trainings that sleep their step count, scaled "
        f"so that the ideal makespan on N slots is {args.seconds:g} s. Speed-up = total sleep / wall time; the bound "
        "is the dry run's ideal speed-up with N trainings at once (`--dry_run`). `all ready`: every ready training "
        "handed to Ray at once (the driver before issue 29); `schedule`: the driver now (at most N handed to Ray, "
        "the longest remaining path first).",
        "",
        "| study | tasks | slots | dry-run bound | all ready | schedule | schedule / bound |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for flagfile, tasks, slots, bound, old, new in rows:
        lines.append(
            f"| `{flagfile}` | {tasks} | {slots} | {bound:.2f}x | {old:.2f}x | {new:.2f}x | {100 * new / bound:.0f}% |"
        )
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as handle:
        handle.write("\n".join(lines) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
