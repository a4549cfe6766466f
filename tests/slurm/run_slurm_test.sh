#!/usr/bin/env bash
# Real-SLURM test: start a private one-node SLURM cluster on this machine, run the workflow on a
# tiny synthetic data set once locally (--cores 2) and once through SLURM with the cluster profile
# workflow/profiles/slurm (plus the test overrides in tests/slurm/profile/), and check that both
# runs produce the same files, folds and metrics.
#
#   sudo tests/slurm/run_slurm_test.sh          (or: make test-slurm)
#
# Needs root (apt packages, munged as user munge, slurmd) on a throwaway machine or container:
# it writes /etc/slurm/slurm.conf for the run (refusing if a real one exists) and removes it again.
# Daemon state and logs live in a temp dir; only the daemons started here are stopped, by pid.
# Environment:
#   PYTHON=.venv/bin/python      interpreter with the project's requirements
#   SLURM_TEST_GPU=fake|none     fake: the node advertises one count-only "gpu" GRES, so the real
#                                profile's --gpus=1/--cpus-per-gpu request is exercised (default);
#                                none: no GRES, the train jobs' GPU request is overridden away
#   SLURM_TEST_TIMEOUT=1200      hard limit in seconds for the whole script
#   SLURM_TEST_KEEP=1            keep the temp dir (kept anyway on failure)
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
HERE="$REPO/tests/slurm"
PY="${PYTHON:-$REPO/.venv/bin/python}"
GPU_MODE="${SLURM_TEST_GPU:-fake}"
DEADLINE="${SLURM_TEST_TIMEOUT:-1200}"
PLUGIN_VERSION=2.8.0
EXPERIMENT=tiny
TRAIN_THREADS=2 # = runtime.train_threads in tiny.yaml
MARKER="written by fundus tests/slurm/run_slurm_test.sh"
START=$(date +%s)

STATE="" CONF="" ETC_CONF=/etc/slurm/slurm.conf ETC_CONF_OURS=0
MUNGED_PID="" SLURMCTLD_PID="" SLURMD_PID="" WATCHDOG_PID=""
STEPS=() # pids of running steps (see start_step)
REASON="did not finish"

log() { printf '[slurm-test %4ss] %s\n' "$(($(date +%s) - START))" "$*"; }
fail() {
    REASON="$*"
    log "error: $*"
    exit 1
}
alive() { [[ -n "$1" ]] && kill -0 "$1" 2>/dev/null; }

# Stop one process we started: TERM, up to $2 seconds, then KILL.
stop_pid() {
    local pid=$1 grace=${2:-15} name=$3
    alive "$pid" || return 0
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq $((grace * 2))); do
        alive "$pid" || break
        sleep 0.5
    done
    if alive "$pid"; then
        log "$name (pid $pid) ignored SIGTERM, sending SIGKILL"
        kill -KILL "$pid" 2>/dev/null || true
    fi
    wait "$pid" 2>/dev/null || true
}

cleanup() {
    local rc=$?
    set +e
    trap '' INT TERM # cleanup is bounded by timeouts; don't let a second signal cut it short
    trap - EXIT
    local pid
    for pid in "${STEPS[@]}"; do # running steps: `timeout` processes (pid = their process group)
        alive "$pid" || continue
        # SIGINT: snakemake cancels its jobs (scancel) and stops; SIGTERM would wait for them.
        log "stopping a running step (timeout pid $pid, SIGINT to snakemake)"
        kill -INT "$pid" 2>/dev/null
    done
    for pid in "${STEPS[@]}"; do
        for _ in $(seq 90); do
            alive "$pid" || break
            sleep 0.5
        done
        alive "$pid" && kill -KILL -- "-$pid" 2>/dev/null
        wait "$pid" 2>/dev/null
    done
    if alive "$SLURMCTLD_PID"; then # jobs outlive slurmd (slurmstepd): cancel them first
        local left
        left=$(timeout 15 squeue -h -t PENDING,RUNNING,CONFIGURING,COMPLETING -o %i 2>/dev/null | wc -l)
        if [[ "$left" -gt 0 ]]; then
            log "cancelling $left SLURM job(s) still queued/running on the test cluster"
            timeout 15 scancel --partition=test 2>/dev/null
            for _ in $(seq 30); do
                [[ $(timeout 10 squeue -h -t PENDING,RUNNING,CONFIGURING,COMPLETING -o %i 2>/dev/null | wc -l) -eq 0 ]] && break
                sleep 1
            done
        fi
    fi
    stop_pid "$SLURMD_PID" 15 slurmd
    stop_pid "$SLURMCTLD_PID" 15 slurmctld
    stop_pid "$MUNGED_PID" 10 munged
    [[ "$ETC_CONF_OURS" == 1 ]] && grep -q "$MARKER" "$ETC_CONF" 2>/dev/null && rm -f "$ETC_CONF"
    if [[ -n "$WATCHDOG_PID" ]]; then
        kill -TERM "$WATCHDOG_PID" 2>/dev/null
        wait "$WATCHDOG_PID" 2>/dev/null
    fi
    if [[ -n "$STATE" && -d "$STATE" ]]; then
        if [[ $rc -eq 0 && "${SLURM_TEST_KEEP:-0}" != 1 ]]; then
            rm -rf "$STATE"
        else
            log "kept logs and working dirs in $STATE"
        fi
    fi
    local took=$(($(date +%s) - START))
    if [[ $rc -eq 0 ]]; then
        echo "SLURM TEST: PASS (local and SLURM runs agree; ${took}s)"
    else
        echo "SLURM TEST: FAIL: $REASON (exit $rc; ${took}s)"
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'REASON="interrupted or global timeout (${DEADLINE}s)"; exit 124' INT TERM

# start_step SECONDS LOGFILE DIR COMMAND...: run COMMAND in DIR in the background, bounded by a
# timeout; its pid is left in STEP_PID. `timeout` puts itself and COMMAND in a new process group;
# on expiry COMMAND gets SIGINT (snakemake then cancels its SLURM jobs), SIGKILL 60 s later.
# finish_step PID: wait for it; `wait` (unlike a foreground command) lets a signal's trap run at once.
start_step() {
    local limit=$1 logfile=$2 dir=$3
    shift 3
    (cd "$dir" && exec timeout --signal=INT --kill-after=60 "$limit" "$@" >"$logfile" 2>&1) &
    STEP_PID=$!
    STEPS+=("$STEP_PID")
}
finish_step() {
    local rc=0
    wait "$1" || rc=$?
    return "$rc"
}
run_step() {
    start_step "$@"
    finish_step "$STEP_PID"
}

# The whole script stops by itself: after $DEADLINE seconds the watchdog sends SIGTERM.
(
    sleep "$DEADLINE" &
    sleeper=$!
    trap 'kill $sleeper 2>/dev/null; exit 0' TERM
    wait "$sleeper"
    echo "[slurm-test] global timeout of ${DEADLINE}s reached" >&2
    kill -TERM $$
) &
WATCHDOG_PID=$!

# ---------------------------------------------------------------- prerequisites (idempotent)
[[ $(id -u) -eq 0 ]] || fail "needs root (installs packages, runs munged/slurmctld/slurmd); run with sudo"
[[ "$PY" == */* ]] || PY=$(command -v "$PY") || fail "no Python '${PYTHON:-}' on PATH"
[[ -x "$PY" ]] || fail "no Python at $PY (run 'make venv' or set PYTHON=)"
PY="$(cd "$(dirname "$PY")" && pwd)/$(basename "$PY")" # absolute (steps run in other dirs), venv link kept
[[ $(nproc) -ge $TRAIN_THREADS ]] || fail "needs at least $TRAIN_THREADS CPUs"
case "$GPU_MODE" in fake | none) ;; *) fail "SLURM_TEST_GPU must be fake or none, not '$GPU_MODE'" ;; esac

if ! command -v slurmctld >/dev/null || ! command -v slurmd >/dev/null || ! command -v sbatch >/dev/null ||
    ! command -v munged >/dev/null; then
    log "installing slurm-wlm and munge (apt)"
    run_step 900 /tmp/fundus-slurm-apt.log / bash -c \
        'apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends slurm-wlm munge' ||
        {
            tail -n 20 /tmp/fundus-slurm-apt.log
            fail "apt-get install slurm-wlm munge failed"
        }
fi
if ! "$PY" - "$PLUGIN_VERSION" <<'EOF' 2>/dev/null; then
import sys
from importlib.metadata import version
sys.exit(version("snakemake-executor-plugin-slurm") != sys.argv[1])
EOF
    log "installing snakemake-executor-plugin-slurm==$PLUGIN_VERSION (pip)"
    run_step 600 /tmp/fundus-slurm-pip.log / "$PY" -m pip install --quiet "snakemake-executor-plugin-slurm==$PLUGIN_VERSION" ||
        {
            tail -n 20 /tmp/fundus-slurm-pip.log
            fail "pip install snakemake-executor-plugin-slurm failed"
        }
fi
log "$(slurmctld -V), $(munged -V 2>&1 | head -n 1), snakemake $("$PY" -m snakemake --version)," \
    "plugin $("$PY" -c 'from importlib.metadata import version; print(version("snakemake-executor-plugin-slurm"))')"

# The plugin's job step strips SLURM_CONF before its nested `srun`, so srun inside a job only finds
# the cluster through the default /etc/slurm/slurm.conf. Never overwrite a real cluster's file.
if [[ -e "$ETC_CONF" ]] && ! grep -q "$MARKER" "$ETC_CONF"; then
    fail "$ETC_CONF exists (a configured SLURM installation?); this test sets up its own cluster, run it in a throwaway machine or container"
fi

# ---------------------------------------------------------------- private cluster
STATE=$(mktemp -d /tmp/fundus-slurm-test.XXXXXX)
chmod 755 "$STATE" # munged (user munge) needs to traverse to its socket
mkdir -p "$STATE/munge" "$STATE/slurmctld" "$STATE/slurmd" "$STATE/log" "$STATE/work"
chown munge:munge "$STATE/munge"
chmod 755 "$STATE/munge"
CONF="$STATE/slurm.conf"
export SLURM_CONF="$CONF"
unset SNAKEMAKE_PROFILE SLURM_JOB_ID
log "state, logs and working dirs: $STATE"

dd if=/dev/urandom bs=1 count=1024 of="$STATE/munge/munge.key" status=none
chown munge:munge "$STATE/munge/munge.key"
chmod 400 "$STATE/munge/munge.key"

HOST=$(hostname -s)
node=$(slurmd -C)
node=${node%%$'\n'*}
field() { sed -nE "s/.*\<$1=([0-9]+).*/\1/p" <<<"$node"; }
CPUS=$(field CPUs) BOARDS=$(field Boards) SOCKETS=$(field SocketsPerBoard)
CORES=$(field CoresPerSocket) THREADS=$(field ThreadsPerCore) MEMORY=$(field RealMemory)
[[ -n "$CPUS" && -n "$MEMORY" ]] || fail "could not read the node's CPUs/memory from 'slurmd -C': $node"
read -r CTLD_PORT SLURMD_PORT < <("$PY" -c '
import socket
socks = [socket.socket() for _ in range(2)]
for s in socks: s.bind(("127.0.0.1", 0))
print(*(s.getsockname()[1] for s in socks))')
GRES=""
if [[ "$GPU_MODE" == fake ]]; then
    # A count-only stand-in GPU (slurm requires a device file; nothing opens it): jobs that ask
    # for --gpus=1 are scheduled as on a GPU node and then train on the CPU.
    GRES="Gres=gpu:1"
    echo "NodeName=$HOST Name=gpu File=/dev/null" >"$STATE/gres.conf"
fi
sed -e "s#@MARKER@#$MARKER#" -e "s#@HOST@#$HOST#g" -e "s#@CTLD_PORT@#$CTLD_PORT#" \
    -e "s#@SLURMD_PORT@#$SLURMD_PORT#" -e "s#@STATE@#$STATE#g" -e "s#@CPUS@#$CPUS#" \
    -e "s#@BOARDS@#$BOARDS#" -e "s#@SOCKETS@#$SOCKETS#" -e "s#@CORES@#$CORES#" -e "s#@THREADS@#$THREADS#" \
    -e "s#@MEMORY@#$MEMORY#" -e "s#@GRES@#$GRES#" -e "s#@GRESTYPES@#${GRES:+GresTypes=gpu}#" \
    "$HERE/slurm.conf.in" >"$CONF"
mkdir -p /etc/slurm
cp "$CONF" "$ETC_CONF"
ETC_CONF_OURS=1
log "node $HOST: $CPUS CPUs, $MEMORY MB${GRES:+, 1 stand-in gpu GRES}; slurmctld port $CTLD_PORT, slurmd port $SLURMD_PORT"

SOCKET="$STATE/munge/munge.socket"
setpriv --reuid=munge --regid=munge --init-groups munged --foreground --key-file="$STATE/munge/munge.key" \
    --socket="$SOCKET" --pid-file="$STATE/munge/munged.pid" --log-file="$STATE/munge/munged.log" \
    --seed-file="$STATE/munge/munged.seed" >"$STATE/log/munged.out" 2>&1 &
MUNGED_PID=$!
for _ in $(seq 40); do
    [[ -S "$SOCKET" ]] && break
    alive "$MUNGED_PID" || break
    sleep 0.5
done
timeout 10 munge -S "$SOCKET" -n </dev/null | timeout 10 unmunge -S "$SOCKET" >/dev/null 2>&1 ||
    {
        cat "$STATE/log/munged.out"
        fail "munged did not start or does not answer on $SOCKET"
    }
log "munged running (pid $MUNGED_PID)"

slurmctld -D -f "$CONF" >"$STATE/log/slurmctld.out" 2>&1 &
SLURMCTLD_PID=$!
for _ in $(seq 40); do
    timeout 5 scontrol ping 2>/dev/null | grep -q UP && break
    alive "$SLURMCTLD_PID" || break
    sleep 0.5
done
timeout 5 scontrol ping 2>/dev/null | grep -q UP || {
    tail -n 20 "$STATE/log/slurmctld.out"
    fail "slurmctld did not come up"
}
slurmd -D -f "$CONF" >"$STATE/log/slurmd.out" 2>&1 &
SLURMD_PID=$!
node_state=""
for _ in $(seq 60); do
    node_state=$(timeout 10 sinfo -h -n "$HOST" -o %t 2>/dev/null || true)
    [[ "$node_state" == idle ]] && break
    alive "$SLURMD_PID" || break
    sleep 1
done
if [[ "$node_state" != idle ]]; then
    tail -n 20 "$STATE/log/slurmd.out" "$STATE/log/slurmctld.out"
    timeout 10 sinfo -R
    fail "node $HOST is '${node_state:-unknown}', not idle"
fi
log "slurmctld (pid $SLURMCTLD_PID) and slurmd (pid $SLURMD_PID) up:"
timeout 10 sinfo -o "%P %a %l %D %t %N %c %m %G" | sed 's/^/    /' || true

# ---------------------------------------------------------------- two working dirs, two runs
for side in local slurm; do
    work="$STATE/work/$side"
    mkdir -p "$work"
    cp "$REPO/Snakefile" "$work/"
    cp -r "$REPO/workflow" "$REPO/config" "$work/"
    find "$work" -name __pycache__ -prune -exec rm -rf {} +
    cp "$HERE/tiny.yaml" "$work/tiny.yaml"
done
overrides=("$HERE/profile/config.yaml")
[[ "$GPU_MODE" == none ]] && overrides+=("$HERE/profile/no-gpu.yaml")
"$PY" "$HERE/merge_profile.py" "$STATE/profile" "$REPO/workflow/profiles/slurm/config.yaml" "${overrides[@]}" \
    >"$STATE/log/profile.yaml"

# Both runs at once: the SLURM run mostly waits (submission, status polls), and the numbers do not
# depend on timing, only on the thread count (runtime.train_threads) and the device.
log "SLURM profile = workflow/profiles/slurm + tests/slurm/profile (${GPU_MODE} gpu), merged:"
sed 's/^/    /' "$STATE/log/profile.yaml"
t0=$(date +%s)
log "run 1: SLURM: snakemake --workflow-profile <merged profile> --configfile tiny.yaml"
start_step 720 "$STATE/log/slurm.log" "$STATE/work/slurm" \
    "$PY" -m snakemake --workflow-profile "$STATE/profile" --configfile tiny.yaml
slurm_pid=$STEP_PID
log "run 2: local: snakemake --cores 2 --configfile tiny.yaml"
start_step 600 "$STATE/log/local.log" "$STATE/work/local" "$PY" -m snakemake --cores 2 --configfile tiny.yaml
local_pid=$STEP_PID
local_rc=0 slurm_rc=0
finish_step "$local_pid" || local_rc=$?
LOCAL_SECONDS=$(($(date +%s) - t0))
expected_jobs=$(awk '$1 == "total" {print $2; exit}' "$STATE/log/local.log")
log "local run finished (exit $local_rc) after ${LOCAL_SECONDS}s, ${expected_jobs:-?} jobs incl. 'all'"
if [[ $local_rc -ne 0 ]]; then
    tail -n 40 "$STATE/log/local.log"
    fail "local run failed"
fi
finish_step "$slurm_pid" || slurm_rc=$?
SLURM_SECONDS=$(($(date +%s) - t0))
log "SLURM run finished (exit $slurm_rc) after ${SLURM_SECONDS}s"
if [[ $slurm_rc -ne 0 ]]; then
    tail -n 60 "$STATE/log/slurm.log"
    timeout 20 squeue --states=all -O "JobID:7,State:11,NumCPUs:5,tres-per-job:12,Reason:20,Comment:50" || true
    # the SLURM logs of failed jobs (successful ones are kept too: slurm-keep-successful-logs) ...
    grep -rlE "Error|Traceback" "$STATE/work/slurm/.snakemake/slurm_logs" 2>/dev/null | head -n 2 |
        while read -r failed_log; do
            echo "==> $failed_log"
            tail -n 15 "$failed_log"
        done
    # ... and the rule logs named in snakemake's "Error in rule" reports
    awk '/^Error in rule/ {e = 1} e && /^    log: / {sub(/^    log: /, ""); sub(/ \(check.*/, "");
        split($0, a, ", "); print a[1]; e = 0}' "$STATE/log/slurm.log" | sort -u | head -n 2 |
        while read -r rule_log; do
            echo "==> $rule_log"
            tail -n 15 "$STATE/work/slurm/$rule_log"
        done
    fail "SLURM run failed"
fi

# ---------------------------------------------------------------- evidence that SLURM ran the jobs
run_id=$(sed -nE 's/.*SLURM run ID: ([^ ]+).*/\1/p' "$STATE/log/slurm.log" | head -n 1)
[[ -n "$run_id" ]] || fail "no 'SLURM run ID' in the snakemake log: did it use the slurm executor?"
submitted=$(grep -c "has been submitted with SLURM jobid" "$STATE/log/slurm.log" || true)
timeout 20 squeue --states=all --name "$run_id" -O "JobID:7,State:11,NumCPUs:5,tres-per-job:12,Comment:50" \
    >"$STATE/log/squeue.txt" || fail "squeue failed"
rows=$(($(wc -l <"$STATE/log/squeue.txt") - 1))
log "SLURM jobs of run $run_id (squeue --states=all; no accounting database needed):"
sed 's/^/    /' "$STATE/log/squeue.txt"
completed=$(awk 'NR > 1 && $2 == "COMPLETED"' "$STATE/log/squeue.txt" | wc -l)
done_lines=$(grep -c "_job_complete: JobId=.* done" "$STATE/log/slurmctld.out" || true)
log "snakemake submitted $submitted jobs; squeue lists $rows, $completed COMPLETED; slurmctld logged $done_lines '_job_complete ... done'"
[[ -z "$expected_jobs" || "$submitted" -eq $((expected_jobs - 1)) ]] ||
    fail "expected $((expected_jobs - 1)) SLURM jobs (all local jobs but 'all'), snakemake submitted $submitted"
[[ "$submitted" -gt 0 && "$rows" -eq "$submitted" && "$completed" -eq "$submitted" ]] ||
    fail "not every submitted job is COMPLETED in squeue"
train_rows=$(awk 'NR > 1 && $5 ~ /^rule_train_/' "$STATE/log/squeue.txt")
[[ $(wc -l <<<"$train_rows") -eq 2 ]] || fail "expected 2 train jobs in squeue"
awk -v want="$TRAIN_THREADS" '$3 != want {bad = 1} END {exit bad}' <<<"$train_rows" ||
    fail "train jobs did not get $TRAIN_THREADS CPUs (= runtime.train_threads)"
if [[ "$GPU_MODE" == fake ]]; then
    awk '$4 != "gres:gpu:1" {bad = 1} END {exit bad}' <<<"$train_rows" || fail "train jobs did not request a GPU"
    awk 'NR > 1 && $5 !~ /^rule_train_/ && $4 ~ /gpu/ {bad = 1} END {exit bad}' "$STATE/log/squeue.txt" ||
        fail "a non-train job requested a GPU"
fi
train_log=$(find "$STATE/work/slurm/.snakemake/slurm_logs/rule_train" -name '*.log' | sort | head -n 1)
if [[ -n "$train_log" ]]; then
    log "a train job's SLURM log ($(basename "$train_log")):"
    grep -vE "^ *Command:" "$train_log" | grep -E "host|rule train|threads:|resources:|Finished|steps" |
        head -n 8 | sed 's/^/    /' || true
fi
first_train=$(awk 'NR == 1 {print $1}' <<<"$train_rows")
log "scontrol show job $first_train (a train job):"
{ timeout 10 scontrol show job -o "$first_train" |
    grep -oE " (JobState|NumCPUs|TRES|TresPerJob|CpusPerTres|NodeList|Comment)=[^ ]+" | tr '\n' ' ' | sed 's/^/   /'; } || true
echo
grep -E "has been submitted with SLURM jobid" "$STATE/log/slurm.log" | head -n 3 | sed 's/^/    /' || true

# ---------------------------------------------------------------- same results?
log "comparing results/ of the two runs"
if ! "$PY" "$HERE/compare_runs.py" "$STATE/work/local" "$STATE/work/slurm" "$EXPERIMENT" | sed 's/^/    /'; then
    fail "the SLURM run's results differ from the local run's"
fi
log "wall time: local ${LOCAL_SECONDS}s, SLURM ${SLURM_SECONDS}s"
REASON=""
