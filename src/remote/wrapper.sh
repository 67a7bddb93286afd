# rollgate's command wrapper, run on the node by `sh -c` (see src/remote/mod.rs).
# Arguments: MODE (start|restart|probe) DIR SECONDS RUN SKIP
# start: runs RUN detached from the SSH session (its own session, `setsid`), under
#   `timeout -s KILL SECONDS`, its output appended to DIR/output and its exit status written
#   to DIR/status; then streams DIR/output (from line SKIP+1) until it ends. If DIR exists the
#   command was started before: attach to it instead (never start it twice).
# restart: a new attempt after a failure: a record of a command that ended without success is
#   moved aside to DIR.attempt-N, then as start (a command still running, or one that exited 0,
#   is attached to: never doubled).
# probe: says what DIR records: no-record, running, exit N, rebooted (no status, the node
#   booted since), lost (no status, the process is gone).
# Control lines go to stderr as `ROLLGATE:...`; the command's output goes to stdout.
set -u
mode=$1; d=$2; secs=$3; run=$4; skip=$5
# Secret variables (env-from-runner) arrive on stdin as `export NAME='value'` lines, never as
# arguments (which any user of the node can read in the process list); the command inherits them.
rollgate_secrets=$(cat) && eval "$rollgate_secrets"; unset rollgate_secrets
say() { printf 'ROLLGATE:%s\n' "$*" >&2; }
boot_id() { cat /proc/sys/kernel/random/boot_id 2>/dev/null || echo unknown; }
running() {
  [ ! -e "$d/status" ] && [ -s "$d/pid" ] && [ "$(cat "$d/boot" 2>/dev/null)" = "$(boot_id)" ] \
    && kill -0 "$(cat "$d/pid")" 2>/dev/null
}
state() {
  if [ ! -d "$d" ]; then echo no-record
  elif [ -e "$d/status" ]; then echo "exit $(cat "$d/status")"
  elif running; then echo running
  elif [ "$(cat "$d/boot" 2>/dev/null)" != "$(boot_id)" ]; then echo rebooted
  elif [ ! -e "$d/pid" ]; then echo starting
  else echo lost
  fi
}
wait_pid() {
  i=0
  while [ ! -e "$d/pid" ] && [ ! -e "$d/status" ] && [ "$i" -lt "$1" ]; do sleep 0.1; i=$((i + 1)); done
}
start() {
  boot_id > "$d/boot"
  : >> "$d/output"
  setsid sh -c 'echo $$ > "$1/pid.new" && mv "$1/pid.new" "$1/pid"
timeout -s KILL "$2" sh -c "$3" >> "$1/output" 2>&1 < /dev/null
echo $? > "$1/status.new" && mv "$1/status.new" "$1/status"' rollgate-command "$d" "$secs" "$run" > /dev/null 2>&1 < /dev/null &
  say "started $d"
}
# A record somebody else made (another user, or a link) is never trusted or written into.
if [ -e "$d" ] || [ -L "$d" ]; then
  if [ -L "$d" ] || [ ! -O "$d" ]; then say "error $d exists but is not this user's directory: refusing it"; exit 1; fi
fi
if [ "$mode" = probe ]; then say "state $(state)"; exit 0; fi
# A new attempt moves aside a record that ended without success (a success is attached to).
if [ "$mode" = restart ] && [ -d "$d" ] && ! running && [ "$(cat "$d/status" 2>/dev/null)" != 0 ]; then
  n=1
  while [ -e "$d.attempt-$n" ]; do n=$((n + 1)); done
  mv "$d" "$d.attempt-$n" && say "archived $d.attempt-$n"
fi
if mkdir -m 700 "$d" 2>/dev/null; then
  start
elif [ ! -d "$d" ]; then
  say "error cannot create $d"; exit 1
else
  wait_pid 50
  # A directory without a pid: a wrapper died between creating it and starting the command.
  if [ -e "$d/pid" ] || [ -e "$d/status" ]; then say "attached $d"; else start; fi
fi
wait_pid 100
from=$((skip + 1))
if running; then
  tail -n "+$from" -s 0.2 --pid="$(cat "$d/pid")" -f "$d/output"
else
  tail -n "+$from" "$d/output"
fi
say "end $(state)"
