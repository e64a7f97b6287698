#!/usr/bin/env python3
"""Run a command and print one JSON line: exit code, wall seconds, CPU seconds (user+sys) and
peak RSS in KiB of the command and its children (getrusage). Used by the benchmark scripts."""
import json
import resource
import subprocess
import sys
import time

start = time.monotonic()
proc = subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL)
wall = time.monotonic() - start
ru = resource.getrusage(resource.RUSAGE_CHILDREN)
print(json.dumps({
    "rc": proc.returncode,
    "wall_s": round(wall, 4),
    "cpu_s": round(ru.ru_utime + ru.ru_stime, 4),
    "maxrss_kib": ru.ru_maxrss,
}))
