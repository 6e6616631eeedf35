#!/bin/bash
# start_x11_server.sh DISPLAY PORT SIZE LISTEN
#
# Starts one desktop for x11vnc_desktop_session.py: an X server (Xvfb) on :DISPLAY with a
# terminal on it, served by x11vnc on TCP PORT with VNC authentication.
#
#   DISPLAY  X display number, e.g. 200
#   PORT     the VNC port, e.g. 6100
#   SIZE     WIDTHxHEIGHT, e.g. 1600x1200
#   LISTEN   "localhost" (loopback only) or "any" (every interface, for a gateway elsewhere)
#
# The VNC password is read from standard input, never from the command line or the
# environment (both are visible to other users through /proc). The script works the same
# whether it is run from a file or fed to a shell over ssh without installing anything:
#
#   bash start_x11_server.sh 200 6100 1600x1200 localhost      <<< "$password"
#   { cat start_x11_server.sh; echo "$password"; } | ssh n8 bash -s -- 200 6100 1600x1200 any
#
# In both cases the password is the line of stdin that follows what bash has read of the
# script. bash reads a script from a pipe one byte at a time, so that line is still unread
# when `main` runs, provided `main` is called on the script's last line.
#
# State (PIDs, logs, the password) lives in /tmp/vizgate-x11-UID-DISPLAY, mode 0700; stop_x11_server.sh
# DISPLAY stops everything recorded there. Not $XDG_RUNTIME_DIR: over ssh it is the login
# session's /run/user/UID, which logind removes when the user's last session ends, taking
# the PID files with it while the desktop keeps running.
#
# Exit status 0 once the VNC port accepts connections; otherwise non-zero, a one-line reason
# on stderr, and everything this run started is stopped again.

set -eu
set +m  # background jobs stay in our process group, so "setsid cmd &" execs without forking

PROG=start_x11_server.sh
XVFB_PID=
X11VNC_PID=
XTERM_PID=
STATE=
STARTED=0

die() {
    printf '%s: %s\n' "$PROG" "$*" >&2
    exit 1
}

# A PID counts as running until it is gone or a zombie: an orphan is reaped by PID 1,
# which may take a while, and `kill -0` succeeds on a zombie.
running() {
    local stat
    stat=$(cat "/proc/$1/stat" 2>/dev/null) || return 1
    stat=${stat##*) }
    [ "${stat%% *}" != Z ]
}

# Stop a process we started (in its own session, so the whole group goes): TERM, a
# bounded wait, then KILL. The comm check guards against a recycled PID.
stop_pid() {
    local pid=$1 name=$2 i
    [ -n "$pid" ] || return 0
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
}

# Xvfb leaves its lock and socket behind when it is killed; remove them only if they are
# the ones of the Xvfb we started.
remove_stale_x_files() {
    local display=$1 pid=$2 owner
    [ -n "$pid" ] || return 0
    owner=$(tr -d ' \n' 2>/dev/null <"/tmp/.X$display-lock") || return 0
    if [ "$owner" = "$pid" ] && ! running "$pid"; then
        rm -f "/tmp/.X$display-lock" "/tmp/.X11-unix/X$display"
    fi
}

on_exit() {
    local status=$?
    if [ "$STARTED" != 1 ]; then
        stop_pid "$X11VNC_PID" x11vnc
        stop_pid "$XTERM_PID" xterm
        stop_pid "$XVFB_PID" Xvfb
        remove_stale_x_files "$DISPLAY_NUMBER" "$XVFB_PID"
        if [ -n "$STATE" ]; then
            rm -rf -- "$STATE"
        fi
    fi
    exit "$status"
}

# Is something listening on the TCP port? `ss` looks without connecting (its first line
# is a header; -H to drop it is too recent for some nodes); bash's /dev/tcp is the fallback
# on nodes without iproute2.
port_listening() {
    if command -v ss >/dev/null 2>&1; then
        [ -n "$(ss -ltn "sport = :$1" 2>/dev/null | tail -n +2)" ]
    else
        (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
    fi
}

tail_log() {
    # The last line of a log, to say why something did not start.
    if [ -s "$1" ]; then
        printf ' (%s: %s)' "$(basename "$1")" "$(tail -n 1 "$1" | tr -d '\r')"
    fi
}

main() {
    [ $# -eq 4 ] || die "usage: $PROG DISPLAY PORT SIZE LISTEN (password on stdin)"
    DISPLAY_NUMBER=$1
    local port=$2 size=$3 listen=$4 password cookie i
    [[ $DISPLAY_NUMBER =~ ^[0-9]{1,5}$ ]] || die "invalid display number: $DISPLAY_NUMBER"
    [[ $port =~ ^[0-9]{1,5}$ ]] && [ "$port" -ge 1 ] && [ "$port" -le 65535 ] ||
        die "invalid port: $port"
    [[ $size =~ ^[0-9]+x[0-9]+$ ]] || die "invalid size (expected WIDTHxHEIGHT): $size"
    case $listen in
        localhost | any) ;;
        *) die "invalid LISTEN (expected localhost or any): $listen" ;;
    esac

    IFS= read -r password || die "no password on standard input"
    [ -n "$password" ] || die "empty password on standard input"

    for i in Xvfb x11vnc setsid; do
        command -v "$i" >/dev/null 2>&1 || die "$i is not installed on $(hostname)"
    done
    if [ -e "/tmp/.X$DISPLAY_NUMBER-lock" ] || [ -e "/tmp/.X11-unix/X$DISPLAY_NUMBER" ]; then
        die "display :$DISPLAY_NUMBER is in use on $(hostname)"
    fi
    if port_listening "$port"; then
        die "port $port is in use on $(hostname)"
    fi

    umask 077
    local state="/tmp/vizgate-x11-$(id -u)-$DISPLAY_NUMBER"
    if ! mkdir -m 700 -- "$state" 2>/dev/null; then
        # A leftover of a session that was not stopped; reuse it only if it is really ours.
        [ -d "$state" ] && [ ! -L "$state" ] && [ -O "$state" ] ||
            die "$state exists and is not a directory of $(id -un)"
        local f
        for f in xvfb x11vnc xterm; do
            if [ -s "$state/$f.pid" ] && running "$(cat "$state/$f.pid")"; then
                die "display :$DISPLAY_NUMBER already has a session; run stop_x11_server.sh $DISPLAY_NUMBER"
            fi
        done
        rm -rf -- "${state:?}"/*
        chmod 700 -- "$state"
    fi
    STATE=$state

    # An X authority cookie keeps other local users off the display; without xauth the
    # display is open to every local user, so say so. (The ${a[@]+"${a[@]}"} form below
    # expands an empty array under `set -u` on bash < 4.4 too, as found on older nodes.)
    local xauthority="$state/Xauthority" auth_args=()
    if command -v xauth >/dev/null 2>&1; then
        cookie=$(od -An -N16 -tx1 /dev/urandom | tr -d ' \n')
        # Through stdin: a cookie on xauth's command line would show in ps.
        : >"$xauthority"
        printf 'add :%s . %s\n' "$DISPLAY_NUMBER" "$cookie" | xauth -q -f "$xauthority" source -
        auth_args=(-auth "$xauthority")
    else
        printf '%s: warning: xauth not found, display :%s is open to every local user\n' \
            "$PROG" "$DISPLAY_NUMBER" >&2
    fi

    # Every background process gets its own session and no stdin/stdout/stderr of ours:
    # ssh returns only once nothing holds its pipes, and the gateway waits on them too.
    setsid Xvfb ":$DISPLAY_NUMBER" -screen 0 "${size}x24" -nolisten tcp -noreset \
        ${auth_args[@]+"${auth_args[@]}"} </dev/null >"$state/xvfb.log" 2>&1 &
    XVFB_PID=$!
    echo "$XVFB_PID" >"$state/xvfb.pid"
    for i in $(seq 100); do
        [ -S "/tmp/.X11-unix/X$DISPLAY_NUMBER" ] && break
        running "$XVFB_PID" || die "Xvfb :$DISPLAY_NUMBER exited$(tail_log "$state/xvfb.log")"
        sleep 0.1
    done
    [ -S "/tmp/.X11-unix/X$DISPLAY_NUMBER" ] ||
        die "Xvfb :$DISPLAY_NUMBER did not open its socket within 10 s$(tail_log "$state/xvfb.log")"

    if command -v xterm >/dev/null 2>&1; then
        DISPLAY=":$DISPLAY_NUMBER" XAUTHORITY="$xauthority" setsid xterm \
            -geometry 100x30+10+10 -title "desktop :$DISPLAY_NUMBER" \
            </dev/null >"$state/xterm.log" 2>&1 &
        XTERM_PID=$!
        echo "$XTERM_PID" >"$state/xterm.pid"
    fi

    # x11vnc reads its password file once and removes it ("rm:"). A second copy stays in the
    # state folder (mode 0700, this account's alone) for the life of the desktop: a restarted
    # gateway reads it back with x11_server_password.sh to take the session over again.
    # printf is a shell builtin: the password is in no process's argv.
    (
        umask 077
        printf '%s\n' "$password" >"$state/passwd"
        printf '%s\n' "$password" >"$state/vnc-password"
    )
    local vnc_args=(-display ":$DISPLAY_NUMBER" ${auth_args[@]+"${auth_args[@]}"} -rfbport "$port"
        -forever -shared -passwdfile "rm:$state/passwd" -o "$state/x11vnc.log")
    if [ "$listen" = localhost ]; then
        vnc_args+=(-localhost)
    fi
    setsid x11vnc "${vnc_args[@]}" </dev/null >/dev/null 2>&1 &
    X11VNC_PID=$!
    echo "$X11VNC_PID" >"$state/x11vnc.pid"
    for i in $(seq 100); do
        port_listening "$port" && break
        running "$X11VNC_PID" || die "x11vnc exited$(tail_log "$state/x11vnc.log")"
        sleep 0.1
    done
    port_listening "$port" ||
        die "x11vnc did not listen on port $port within 10 s$(tail_log "$state/x11vnc.log")"
    if ! running "$X11VNC_PID"; then
        die "port $port was taken by another process while x11vnc started"
    fi
    rm -f -- "$state/passwd"
    STARTED=1
}

trap on_exit EXIT
DISPLAY_NUMBER=
main "$@"; exit
