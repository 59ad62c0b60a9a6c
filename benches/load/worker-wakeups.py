#!/usr/bin/env python3
"""How the gateway's worker thread spends a stretch of load: how often it wakes, how long it
stays awake each time (the burst of requests it serves before it sleeps again) and how long it
sleeps, from a scheduler trace taken during a run of many-tokens.sh:

    perf sched record -o many.data -- sleep 4     # while the run is in a population interval
    python3 benches/load/worker-wakeups.py many.data [one.data ...]

Why: a request's latency at a fixed rate is mostly its place in such a burst times what each
request before it costs the worker, so two loads whose per-request cost differs by a third show
tails that differ by about as much. "Awake" runs from the scheduler's wake-up of the thread to
its next switch-out, so it includes the wake-up's own delay.
"""
import re
import statistics
import subprocess
import sys

THREAD = "claimgate proxy"
SWITCH = re.compile(r"^\s*.+?\s+\d+\s+\[\d+\]\s+([\d.]+):\s+sched:sched_switch:\s+prev_comm=(.+?) prev_pid=")
WAKING = re.compile(r"^\s*.+?\s+\d+\s+\[\d+\]\s+([\d.]+):\s+sched:sched_waking:\s+comm=(.+?) pid=")


def quantile(values, q):
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))] if values else float("nan")


def main(paths):
    for path in paths:
        script = subprocess.run(["perf", "script", "-i", path], capture_output=True, text=True, check=True)
        woken = None
        last_out = None
        first = last = None
        awake, asleep = [], []
        for line in script.stdout.splitlines():
            m = WAKING.match(line)
            if m and m.group(2) == THREAD:
                t = float(m.group(1))
                first = first if first is not None else t
                last = t
                if woken is None:
                    woken = t
                    if last_out is not None:
                        asleep.append((t - last_out) * 1e6)
                continue
            m = SWITCH.match(line)
            if m and m.group(2) == THREAD and woken is not None:
                t = float(m.group(1))
                awake.append((t - woken) * 1e6)
                woken, last_out = None, t
        if not awake or last == first:
            print(f"{path}: no wake-ups of '{THREAD}' in the trace")
            continue
        span = last - first
        print(f"{path}: {len(awake) / span:.0f} wake-ups/s; awake µs p50 {quantile(awake, .5):.0f} "
              f"p90 {quantile(awake, .9):.0f} p99 {quantile(awake, .99):.0f} mean {statistics.mean(awake):.0f}; "
              f"asleep µs p50 {quantile(asleep, .5):.0f}; awake share {sum(awake) / 1e6 / span:.2f}")


if __name__ == "__main__":
    main(sys.argv[1:])
