#!/usr/bin/env bash
# Writes results/study_graphs.md: the size of the study graph of every flagfile in flags/ (what
# `python -m lottery_tf.main --flagfile=F --executor=ray --dry_run` prints; the local executor plans the same graph).
# No training runs; about 5 s per flagfile.
set -euo pipefail
cd "$(dirname "$0")/.."
out=results/study_graphs.md
tmp=$(mktemp "$out.XXXXXX")
trap 'rm -f "$tmp" "$tmp.sections"' EXIT
{
  echo "# Study graphs of the committed flagfiles"
  echo
  echo "Written by \`bash tools/study_graphs.sh\`, which runs, for each flagfile F in flags/:"
  echo
  echo '    python -m lottery_tf.main --flagfile=F --executor=ray --dry_run'
  echo
  echo "A training is one task of the graph: a level of a replicate's main line, a branch at a level, an analysis"
  echo "copy. Analysis measurements (interpolation between finished copies) are tasks too, but train nothing."
  echo "The critical path is the longest chain of steps that must run one after another (one replicate's main"
  echo "line and the branch at its last level); the ideal speed-up with N trainings at once is total steps over"
  echo "the makespan of a longest-path-first list schedule on N slots, counting steps only (no start-up, data"
  echo "loading or evaluation), so it is the bound Ray cannot beat, not a prediction."
  echo
  for f in flags/*.flags; do
    echo "## $(basename "$f")"
    echo
    python -m lottery_tf.main --flagfile="$f" --executor=ray --dry_run 2>&1 | sed -n '/^study graph:/,/^ideal speed-up/p' | sed 's/^/    /'
    echo
  done
} > "$tmp.sections"
# The same numbers as one table, read back from the lines above.
python3 - "$tmp.sections" > "$tmp" <<'PY'
import re, sys
text = open(sys.argv[1]).read()
head, _, rest = text.partition("\n## ")
rows = []
for section in ("## " + rest).split("\n## "):
    name = section.lstrip("# ").splitlines()[0]
    graph = re.search(r"study graph: ([\d,]+) trainings(?: \(([\d,]+) analysis measurements besides\))?, ([\d,]+) training steps, critical path ([\d,]+) steps", section)
    speedups = re.findall(r"(\d+): ([\d.]+)x", section.split("ideal speed-up", 1)[1])
    rows.append(f"| `{name}` | {graph[1]} | {graph[2] or 0} | {graph[3]} | {graph[4]} | " + " | ".join(f"{s}x" for _, s in speedups) + " |")
print(head.rstrip() + "\n")
print("| flagfile | trainings | analysis measurements | training steps | critical path (steps) | ideal speed-up 1 | 2 | 4 | 8 | 16 |")
print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
print("\n".join(rows))
print("\nWhat the command printed, per flagfile:\n\n## " + rest, end="")
PY
rm -f "$tmp.sections"
mv "$tmp" "$out"
trap - EXIT
echo "wrote $out"
