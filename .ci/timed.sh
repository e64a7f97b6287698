# Sourced by .ci/run and .ci/arm.sh. `timed SECONDS COMMAND...` runs COMMAND under timeout(1),
# which puts it in a process group of its own, where a terminal's Ctrl-C does not reach it: the
# tests would go on (or die writing to a gone `tee`) and leave the servers they started
# running. An interrupt or a TERM is handed on to that group as a TERM (a command started in the
# background of a script ignores interrupts), and the script waits for it to end.
timed() {
  timeout "$@" &
  local pid=$! status=0
  # shellcheck disable=SC2064 # the pid is meant to be expanded now
  trap "kill -TERM -- -$pid 2>/dev/null" INT TERM
  wait "$pid" || status=$?
  while kill -0 "$pid" 2>/dev/null; do wait "$pid" || status=$?; done
  # Whatever the command left running in its group (a test's child that outlived a panic)
  # would hold the pipe to `tee` open, and the run would wait on it until CI's own limit.
  kill -TERM -- -"$pid" 2>/dev/null || true
  trap - INT TERM
  return "$status"
}
