#!/bin/bash
# stop_x11_server.sh DISPLAY
#
# Stops what start_x11_server.sh DISPLAY started (x11vnc, the terminal, Xvfb) by the PIDs it
# recorded in /tmp/vizgate-x11-UID-DISPLAY, then removes that folder. Each process gets
# TERM, a bounded wait, then KILL. Succeeds quietly when nothing is running.
#
# Like the start script it can be run from a file or fed to a shell over ssh:
#
#   bash stop_x11_server.sh 200
#   ssh n8 bash -s -- 200 < stop_x11_server.sh

set -eu
set +m

PROG=stop_x11_server.sh

die() {
    printf '%s: %s\n' "$PROG" "$*" >&2
    exit 1
}

# A zombie counts as gone: an orphan is reaped by PID 1, which may take a while.
running() {
    local stat
    stat=$(cat "/proc/$1/stat" 2>/dev/null) || return 1
    stat=${stat##*) }
    [ "${stat%% *}" != Z ]
}

# Each process was started in its own session, so its process group holds its helpers too
# (xkbcomp for Xvfb). The comm check guards against a PID recycled since it was recorded.
stop_pid() {
    local pid=$1 name=$2 i
    [[ $pid =~ ^[0-9]+$ ]] || return 0
    running "$pid" || return 0
    [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = "$name" ] || return 0
    kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null || return 0
    for i in $(seq 50); do
        running "$pid" || return 0
        sleep 0.1
    done
    kill -KILL -- "-$pid" 2>/dev/null || kill -KILL "$pid" 2>/dev/null || true
    for i in $(seq 20); do
        running "$pid" || return 0
        sleep 0.1
    done
    printf '%s: %s (PID %s) is still running after SIGKILL\n' "$PROG" "$name" "$pid" >&2
    return 1
}

recorded_pid() {
    local file=$1
    if [ -s "$file" ]; then
        tr -dc '0-9' <"$file"
    fi
}

main() {
    [ $# -eq 1 ] || die "usage: $PROG DISPLAY"
    local display=$1
    [[ $display =~ ^[0-9]{1,5}$ ]] || die "invalid display number: $display"

    local state="/tmp/vizgate-x11-$(id -u)-$display"
    [ -e "$state" ] || [ -L "$state" ] || return 0
    [ -d "$state" ] && [ ! -L "$state" ] && [ -O "$state" ] ||
        die "$state is not a directory of $(id -un); not touching it"

    local xvfb_pid status=0
    xvfb_pid=$(recorded_pid "$state/xvfb.pid")
    stop_pid "$(recorded_pid "$state/x11vnc.pid")" x11vnc || status=1
    stop_pid "$(recorded_pid "$state/xterm.pid")" xterm || status=1
    stop_pid "$xvfb_pid" Xvfb || status=1

    # Xvfb removes its lock and socket on TERM but not on KILL; remove them if they are
    # still the ones of our Xvfb.
    if [ -n "$xvfb_pid" ] && ! running "$xvfb_pid" &&
        [ "$(tr -d ' \n' 2>/dev/null <"/tmp/.X$display-lock")" = "$xvfb_pid" ]; then
        rm -f "/tmp/.X$display-lock" "/tmp/.X11-unix/X$display"
    fi

    if [ "$status" = 0 ]; then
        rm -rf -- "$state"
    fi
    return "$status"
}

main "$@"; exit
