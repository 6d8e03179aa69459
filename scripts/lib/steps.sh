# Sourced by the check scripts (gpu_check.sh, torch2_check.sh): each check is a
# step with its own time limit and log, and the first failure stops the script
# (non-zero, the step named), unless KEEP_GOING=1 (then every step runs and the
# script still exits non-zero at the end; see steps_done).
# The caller sets: results (the results file), logs (a folder), check (a name).
failed=()
say() { echo "$check: $*" | tee -a "$results"; }
step() {  # step NAME LIMIT_S CMD...: CMD (a command or an exported function) under its limit
  local name=$1 limit=$2; shift 2
  local t0=$SECONDS rc=0 log=$logs/$check.$name.log
  say "== $name (limit ${limit} s): $*"
  timeout --kill-after=10 "$limit" bash -c '"$@"' step "$@" >"$log" 2>&1 || rc=$?
  tail -n 40 "$log" | sed 's/^/  | /' >>"$results"
  if ((rc != 0)); then
    say "FAILED: $name (exit $rc$( ((rc == 124 || rc == 137)) && echo ', time limit reached'), $((SECONDS - t0)) s); log: $log"
    tail -n 60 "$log" >&2
    failed+=("$name")
    [[ ${KEEP_GOING:-0} == 1 ]] || exit 1
    return 0
  fi
  say "ok: $name ($((SECONDS - t0)) s)"
}
fail() {  # fail NAME WHY: a failure outside a step
  say "FAILED: $1: $2"
  failed+=("$1")
  [[ ${KEEP_GOING:-0} == 1 ]] || exit 1
}
steps_done() {  # the verdict: non-zero if any step failed
  if ((${#failed[@]})); then
    say "failed steps: ${failed[*]}"
    exit 1
  fi
  say "all steps passed"
}
