#!/usr/bin/env python3
"""Run a command under GNU time and print one JSON line: exit code, wall seconds, CPU seconds
(user+sys) and peak RSS in KiB of that process. Used by the benchmark scripts.

With --task-clock first, run the command under `perf stat -e task-clock` instead and print its
exit code and perf's count of the time it (all its threads) ran, in seconds. The two counts
differ by the cost of switching to the process: the scheduler (hence wait4's user+sys) charges a
task from the moment it is picked, perf from the end of the switch. On this nested VM a switch
costs about 10 us: the agent (one switch per sample, sleeping 1 ms) shows user+sys 67 ms
against a task-clock of 45 ms over 1950 switches; the seed agent 636 ms against 596 ms over
4077 switches. wait4's figure is the one the comparison is specified with; task-clock shows the
work itself. Peak RSS is not taken in this mode: perf's own memory would be counted.

Why GNU time and not Python's own wait4/getrusage: a process forked (or even vforked) from
Python is charged Python's resident pages at exec, which inflates the peak RSS of a small
program several times; GNU time is a small C program, so its child starts small."""
import json
import os
import subprocess
import sys
import tempfile

if sys.argv[1:2] == ["--task-clock"]:
    with tempfile.NamedTemporaryFile("r") as out:
        rc = subprocess.call(["perf", "stat", "-x,", "-e", "task-clock,context-switches",
                              "-o", out.name, "--", *sys.argv[2:]], stdout=subprocess.DEVNULL)
        lines = out.read().splitlines()
    value = lambda name: float(next(l for l in lines if name in l).split(",")[0])
    print(json.dumps({"rc": rc, "task_clock_s": value("task-clock") / 1000,
                      "context_switches": int(value("context-switches"))}))
    sys.exit(0)

TIME = "/usr/bin/time"
if not os.path.exists(TIME):
    sys.exit("GNU time is needed: apt-get install time")
with tempfile.NamedTemporaryFile("r") as out:
    proc = subprocess.Popen([TIME, "-o", out.name, "-f", "%x %e %M", *sys.argv[1:]],
                            stdout=subprocess.DEVNULL)
    # wait4 reports CPU to the microsecond (GNU time prints it to 10 ms): the time process
    # plus the command it waited for; time's own share is a millisecond or so.
    _, _, usage = os.wait4(proc.pid, 0)
    fields = out.read().split()[-3:]
rc, wall, rss = int(fields[0]), float(fields[1]), int(fields[2])
print(json.dumps({"rc": rc, "wall_s": wall, "cpu_s": round(usage.ru_utime + usage.ru_stime, 5),
                  "maxrss_kib": rss}))
