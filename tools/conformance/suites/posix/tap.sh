# TAP helpers for the posix suite; each *.t script sources this file.
# POSIX sh only (runs under dash, bash and busybox ash, on the host or in a guest).
# Errnos are checked through the libc message they print ("File exists"), which
# coreutils and busybox both print verbatim.

_tap_n=0
_tap_failed=0

plan() { echo "1..$1"; }

_tap_result() {  # status description [diagnostic]
    _tap_n=$((_tap_n + 1))
    if [ "$1" = 0 ]; then
        echo "ok $_tap_n - $2"
    else
        _tap_failed=$((_tap_failed + 1))
        echo "not ok $_tap_n - $2"
        [ -n "$3" ] && printf '%s\n' "$3" | sed 's/^/# /'
    fi
    return 0
}

# ok DESC CMD...: CMD succeeds.
ok() {
    _d=$1; shift
    _o=$("$@" 2>&1); _s=$?
    _tap_result "$_s" "$_d" "exit $_s: $_o"
}

# fails_with DESC MESSAGE CMD...: CMD fails and its error output names MESSAGE.
fails_with() {
    _d=$1; _m=$2; shift 2
    _o=$("$@" 2>&1) && { _tap_result 1 "$_d" "succeeded, expected: $_m"; return 0; }
    case $_o in
        *"$_m"*) _tap_result 0 "$_d" ;;
        *) _tap_result 1 "$_d" "expected '$_m', got: $_o" ;;
    esac
}

# is DESC GOT EXPECTED
is() {
    if [ "$2" = "$3" ]; then _tap_result 0 "$1"; else _tap_result 1 "$1" "got '$2', expected '$3'"; fi
}

skip() { _tap_n=$((_tap_n + 1)); echo "ok $_tap_n # SKIP $1"; }

# A private scratch directory inside the directory under test; removed at exit.
scratch() {
    cd "${CONFORMANCE_DIR:-.}" || exit 1
    T=$(mktemp -d "./posix.XXXXXX") || exit 1
    trap 'cd /; rm -rf "${CONFORMANCE_DIR:-.}/$T" 2>/dev/null' EXIT
    cd "$T" || exit 1
}

done_testing() { [ "$_tap_failed" = 0 ]; exit $?; }
