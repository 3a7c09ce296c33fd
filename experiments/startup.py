"""How fast the command line answers: wall and CPU time of each command against `python -c pass`.

    python experiments/startup.py                 # 5 repeats each, median; writes outputs/startup/startup.{json,md}
    python experiments/startup.py --repeats 9 --smoke   # also time `python -m advwm.run experiment=smoke` (once per
                                                        # repeat; it crafts and judges, so it takes seconds)
    python experiments/startup.py --checkout /path/to/an/older/advwm     # the same commands of another checkout

Each command runs in a fresh process (the way a person runs it), commands in turn within a repeat so that a change
of load hits all of them alike. CPU time is the child's user + system time (`resource.getrusage(RUSAGE_CHILDREN)`);
wall time includes waiting for a busy machine. A separate run with `-X importtime` says whether torch or Lightning
were imported. The README (Quick start, "How fast it answers") quotes the table. No timing is asserted in tests:
tests/test_cli.py asserts only that torch and Lightning stay out.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
COMMANDS: list[tuple[str, list[str]]] = [
    ("python -c pass", ["-c", "pass"]),
    ("python -c 'import advwm'", ["-c", "import advwm"]),
    ("python -m advwm.run --help", ["-m", "advwm.run", "--help"]),
    ("python -m advwm.weights list", ["-m", "advwm.weights", "list"]),
    ("python -m advwm.report --help", ["-m", "advwm.report", "--help"]),
    ("python -m advwm.run +victims=[stargan,attgan] eps=0", ["-m", "advwm.run", "+victims=[stargan,attgan]", "eps=0"]),
    ("python -m advwm.run +victims=[stargan] attack.iteration=2",
     ["-m", "advwm.run", "+victims=[stargan]", "attack.iteration=2"]),
    ("python -m advwm.run +victims=[stargan] seed=abc", ["-m", "advwm.run", "+victims=[stargan]", "seed=abc"]),
]
SMOKE = ("python -m advwm.run experiment=smoke", ["-m", "advwm.run", "experiment=smoke"])


def timed(args: list[str], env: dict[str, str], extra: list[str]) -> tuple[float, float, int]:
    """(wall seconds, CPU seconds, exit status) of one fresh process."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    done = subprocess.run([sys.executable, *args, *extra], cwd=env["PYTHONPATH"], env=env, stdout=subprocess.DEVNULL,
                          stderr=subprocess.DEVNULL, check=False)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime), done.returncode


def heavy_imports(args: list[str], env: dict[str, str], extra: list[str]) -> list[str]:
    """Which of torch / lightning the command imports (from `-X importtime`)."""
    done = subprocess.run([sys.executable, "-X", "importtime", *args, *extra], cwd=env["PYTHONPATH"], env=env,
                          capture_output=True, text=True, check=False)
    names = {line.rsplit("|", 1)[1].strip().split(".")[0] for line in done.stderr.splitlines()
             if line.startswith("import time:") and line.count("|") == 2}
    return sorted(names & {"torch", "lightning"})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--smoke", action="store_true", help="also time the smoke run (experiment=smoke)")
    parser.add_argument("--checkout", default=str(REPO), help="the advwm checkout whose commands are timed")
    parser.add_argument("--out", default=str(REPO / "outputs" / "startup"))
    options = parser.parse_args()
    scratch = Path(tempfile.mkdtemp(prefix="advwm-startup-"))
    env = {**os.environ, "PYTHONPATH": str(Path(options.checkout).resolve()), "WANDB_MODE": "offline",
           "ADVWM_ROOT": str(scratch), "HYDRA_FULL_ERROR": "0"}
    commands = COMMANDS + ([SMOKE] if options.smoke else [])
    # the run folders of the smoke runs go to the scratch root; the config errors make none
    extra = {name: ([f"hydra.run.dir={scratch}/smoke/{{}}"] if name == SMOKE[0] else []) for name, _ in commands}
    samples: dict[str, list[tuple[float, float]]] = {name: [] for name, _ in commands}
    status: dict[str, int] = {}
    for repeat in range(options.repeats):
        for name, args in commands:
            wall, cpu, code = timed(args, env, [e.format(repeat) for e in extra[name]])
            samples[name].append((wall, cpu))
            status[name] = code
    baseline_wall = statistics.median(w for w, _ in samples[COMMANDS[0][0]])
    baseline_cpu = statistics.median(c for _, c in samples[COMMANDS[0][0]])
    rows = []
    for name, args in commands:
        wall = statistics.median(w for w, _ in samples[name])
        cpu = statistics.median(c for _, c in samples[name])
        heavy = ["yes: it crafts"] if name == SMOKE[0] else heavy_imports(args, env, extra[name])
        rows.append({"command": name, "wall_s": round(wall, 3), "cpu_s": round(cpu, 3),
                     "wall_over_python_s": round(wall - baseline_wall, 3),
                     "cpu_over_python_s": round(cpu - baseline_cpu, 3), "exit_status": status[name],
                     "imports": heavy})
    load = os.getloadavg()
    header = (f"{options.checkout}: {options.repeats} repeats, median; {os.cpu_count()} CPUs, load average "
              f"{load[0]:.2f} {load[1]:.2f} {load[2]:.2f} at the end; python {sys.version.split()[0]}")
    lines = [header, "", "| command | wall | CPU | wall − `python -c pass` | torch / Lightning imported |",
             "|---|---|---|---|---|"]
    for row in rows:
        lines.append(f"| `{row['command']}` | {row['wall_s']:.2f} s | {row['cpu_s']:.2f} s | "
                     f"{row['wall_over_python_s']:+.2f} s | {', '.join(row['imports']) or 'no'} |")
    out = Path(options.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "startup.json").write_text(json.dumps({"header": header, "rows": rows}, indent=2) + "\n")
    (out / "startup.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
