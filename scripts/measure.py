#!/usr/bin/env python3
"""Run a command under GNU time and print one JSON line: exit code, wall seconds, CPU seconds
(user+sys) and peak RSS in KiB of that process. Used by the benchmark scripts.

Why GNU time and not Python's own wait4/getrusage: a process forked (or even vforked) from
Python is charged Python's resident pages at exec, which inflates the peak RSS of a small
program several times; GNU time is a small C program, so its child starts small."""
import json
import os
import subprocess
import sys
import tempfile

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
