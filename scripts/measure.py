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
    proc = subprocess.run([TIME, "-o", out.name, "-f", "%e %U %S %M", *sys.argv[1:]],
                          stdout=subprocess.DEVNULL)
    fields = out.read().split()[-4:]
wall, user, system, rss = float(fields[0]), float(fields[1]), float(fields[2]), int(fields[3])
print(json.dumps({"rc": proc.returncode, "wall_s": wall, "cpu_s": round(user + system, 3),
                  "maxrss_kib": rss}))
