#!/bin/bash
# The batch job of one vizgate Slurm session (see vizgate/launchers/slurm.py).
#
# Usage: slurm_job.sh FOLDER SIZE XVNC DEPTH [DESKTOP]
#
#   FOLDER   the session's folder, shared with the gateway; it holds the VNC password file
#            "passwd" (written by the gateway) and receives "connection".
#   SIZE     the desktop size, WIDTHxHEIGHT.
#   XVNC     the Xvnc program (name or path).
#   DEPTH    the colour depth, e.g. 24.
#   DESKTOP  the desktop name VNC viewers show.
#
# The job starts Xvnc on a free display and a free TCP port of this node, protected by the
# password in FOLDER/passwd. It listens on every interface because the gateway connects from
# another machine in a real cluster; the password guards it. Once the port accepts connections
# the job writes "HOST PORT" to FOLDER/connection (atomically: the gateway polls for it), starts
# an xterm on the display when xterm is installed, and lives as long as its Xvnc.
#
# Slurm's proctrack/linuxproc does not reach processes that left the job's process tree, and
# proctrack/cgroup kills with SIGKILL only, which leaves stale X lock files behind. So the job
# stops its own Xvnc and xterm from a trap and removes the lock files its Xvnc left.

set -u

readonly folder=${1:?usage: slurm_job.sh FOLDER SIZE XVNC DEPTH [DESKTOP]}
readonly size=${2:?missing SIZE}
readonly xvnc=${3:?missing XVNC}
readonly depth=${4:?missing DEPTH}
readonly desktop=${5:-vizgate}

# Displays and ports are tried from a random start so that sessions starting at the same moment
# on one node rarely pick the same ones; a collision only costs another attempt.
readonly display_first=200 display_count=700
readonly port_first=20000 port_count=12000
readonly attempts=20
readonly ready_tenths=200 # how long one Xvnc may take to accept connections (20 s)

xvnc_pid=""  # cleared once the job has waited for it
xterm_pid=""
lock_pid="" # the Xvnc whose lock files the job may remove
display=""
port=""

log() {
    printf '%s vizgate-slurm-job: %s\n' "$(date '+%F %T')" "$*" >&2
}

# Is the process alive (not gone, not a zombie)?
alive() {
    local stat
    stat=$(cat "/proc/$1/stat" 2>/dev/null) || return 1
    stat=${stat##*) }
    [[ ${stat%% *} != Z ]]
}

# Is a TCP socket listening on port $1 on any local address?
port_in_use() {
    local hex files=() f
    hex=$(printf '%04X' "$1")
    for f in /proc/net/tcp /proc/net/tcp6; do
        [[ -r $f ]] && files+=("$f")
    done
    ((${#files[@]})) || return 1
    # Columns: sl local_address rem_address st ...; st 0A is LISTEN.
    awk -v port=":$hex" 'FNR > 1 && $4 == "0A" && substr($2, length($2) - 4) == port { found = 1 }
        END { exit !found }' "${files[@]}"
}

display_in_use() {
    [[ -e /tmp/.X$1-lock || -e /tmp/.X11-unix/X$1 ]]
}

accepts() {
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

pick_display() {
    local i d start=$((RANDOM % display_count))
    for ((i = 0; i < display_count; i++)); do
        d=$((display_first + (start + i) % display_count))
        if ! display_in_use "$d"; then
            echo "$d"
            return 0
        fi
    done
    return 1
}

pick_port() {
    local i p start=$(((RANDOM * 32768 + RANDOM) % port_count))
    for ((i = 0; i < port_count; i++)); do
        p=$((port_first + (start + i) % port_count))
        if ! port_in_use "$p"; then
            echo "$p"
            return 0
        fi
    done
    return 1
}

remove_own_locks() {
    # Only lock files that name our Xvnc: another server may have taken the display since.
    [[ -n $display && -n $lock_pid ]] || return 0
    local lock=/tmp/.X$display-lock owner
    owner=$(tr -d ' \n' <"$lock" 2>/dev/null) || return 0
    if [[ $owner == "$lock_pid" ]]; then
        rm -f "$lock" "/tmp/.X11-unix/X$display"
    fi
}

stop_children() {
    local pid i
    for pid in $xterm_pid $xvnc_pid; do
        kill -TERM "$pid" 2>/dev/null
    done
    for pid in $xterm_pid $xvnc_pid; do
        for ((i = 0; i < 50; i++)); do
            alive "$pid" || break
            sleep 0.1
        done
        if alive "$pid"; then
            log "process $pid ignored SIGTERM for 5 s; killing it"
            kill -KILL "$pid" 2>/dev/null
        fi
        wait "$pid" 2>/dev/null
    done
    remove_own_locks
}

cleanup() {
    trap - TERM INT EXIT
    stop_children
    rm -f "$folder/connection" "$folder/.connection.tmp"
}

trap 'log "terminated"; cleanup; exit 143' TERM
trap 'log "interrupted"; cleanup; exit 130' INT
trap cleanup EXIT

if [[ ! $size =~ ^[0-9]+x[0-9]+$ ]]; then
    log "invalid size '$size' (expected WIDTHxHEIGHT)"
    exit 2
fi
if [[ ! $depth =~ ^[0-9]+$ ]]; then
    log "invalid depth '$depth'"
    exit 2
fi
if [[ ! -r $folder/passwd ]]; then
    log "no VNC password file in $folder"
    exit 2
fi
if ! command -v "$xvnc" >/dev/null 2>&1; then
    log "Xvnc program not found: $xvnc"
    exit 127
fi

# Only the session's owner may connect X clients to its display: with an authority file the
# X server asks for a cookie, without one any local user of the node could.
auth_args=()
if command -v xauth >/dev/null 2>&1; then
    export XAUTHORITY=$folder/Xauthority
    : >"$XAUTHORITY"
    chmod 600 "$XAUTHORITY"
    auth_args=(-auth "$XAUTHORITY")
else
    log "xauth not found: the X display is not protected by a cookie"
fi

# Start Xvnc; on a collision (display or port taken meanwhile) try another pair.
started=""
for ((attempt = 1; attempt <= attempts; attempt++)); do
    display=$(pick_display) || { log "no free X display"; exit 1; }
    port=$(pick_port) || { log "no free TCP port"; exit 1; }
    if ((${#auth_args[@]})); then
        cookie=$(od -An -N16 -tx1 /dev/urandom | tr -d ' \n')
        xauth -q add ":$display" . "$cookie"
    fi
    "$xvnc" ":$display" -geometry "$size" -depth "$depth" -rfbport "$port" \
        -SecurityTypes VncAuth -PasswordFile "$folder/passwd" -desktop "$desktop" \
        "${auth_args[@]}" &
    xvnc_pid=$!
    lock_pid=$xvnc_pid
    for ((i = 0; i < ready_tenths; i++)); do
        alive "$xvnc_pid" || break
        if accepts "$port"; then
            started=yes
            break
        fi
        sleep 0.1
    done
    [[ -n $started ]] && break
    if alive "$xvnc_pid"; then
        log "Xvnc on :$display did not accept connections on port $port in time"
        exit 1
    fi
    wait "$xvnc_pid"
    log "Xvnc on :$display port $port exited with status $?; trying another display and port"
    xvnc_pid="" lock_pid="" display="" port=""
done
if [[ -z $started ]]; then
    log "Xvnc did not start after $attempts attempts"
    exit 1
fi

host=$(hostname -f 2>/dev/null)
[[ -n $host ]] || host=$(hostname)
printf '%s %s\n' "$host" "$port" >"$folder/.connection.tmp"
mv -f "$folder/.connection.tmp" "$folder/connection"
log "Xvnc (pid $xvnc_pid) serves display :$display on $host port $port"

if command -v xterm >/dev/null 2>&1; then
    (cd "${HOME:-/}" && DISPLAY=:$display exec xterm -title "$desktop") &
    xterm_pid=$!
fi

# The session lives as long as its Xvnc; a signal interrupts the wait and runs the trap.
wait "$xvnc_pid"
status=$?
xvnc_pid=""
log "Xvnc exited with status $status"
exit "$status"
