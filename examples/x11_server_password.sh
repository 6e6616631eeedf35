#!/bin/bash
# x11_server_password.sh DISPLAY
#
# Prints the VNC password of the desktop that start_x11_server.sh DISPLAY started, while its
# x11vnc still runs: what a restarted gateway needs to take the session over again. The
# password goes to standard output only, never to a command line or a log.
#
# Like the other scripts it can be run from a file or fed to a shell over ssh:
#
#   bash x11_server_password.sh 200
#   ssh n8 bash -s -- 200 < x11_server_password.sh
#
# Exit status 0 with the password on stdout; 3, printing nothing, when no desktop of this
# account runs on DISPLAY; 1 with a one-line reason on stderr otherwise.

set -eu

PROG=x11_server_password.sh
NOTHING_RUNS=3

die() {
    printf '%s: %s\n' "$PROG" "$*" >&2
    exit 1
}

# A zombie counts as gone, as in the other scripts.
running() {
    local stat
    stat=$(cat "/proc/$1/stat" 2>/dev/null) || return 1
    stat=${stat##*) }
    [ "${stat%% *}" != Z ]
}

main() {
    [ $# -eq 1 ] || die "usage: $PROG DISPLAY"
    local display=$1 state pid
    [[ $display =~ ^[0-9]{1,5}$ ]] || die "invalid display number: $display"

    state="/tmp/vizgate-x11-$(id -u)-$display"
    [ -e "$state" ] || [ -L "$state" ] || exit "$NOTHING_RUNS"
    [ -d "$state" ] && [ ! -L "$state" ] && [ -O "$state" ] ||
        die "$state is not a directory of $(id -un); not reading it"

    pid=$(tr -dc '0-9' 2>/dev/null <"$state/x11vnc.pid") || exit "$NOTHING_RUNS"
    # The comm check guards against a PID recycled since the desktop's x11vnc ended.
    [ -n "$pid" ] && running "$pid" && [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = x11vnc ] ||
        exit "$NOTHING_RUNS"
    [ -s "$state/vnc-password" ] || die "the desktop on :$display has no saved password"
    cat -- "$state/vnc-password"
}

main "$@"
