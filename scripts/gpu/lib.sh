# shellcheck shell=bash
# Helpers sourced by the scripts of scripts/gpu/.

# Waits until the server on 127.0.0.1:PORT answers /ready: returns 0 then, or 1 (saying why on
# stderr, with the end of LOG) if process PID exits first or 300 s pass.
wait_ready() { # port, pid, log
    for _ in $(seq 1 600); do
        curl -sf "http://127.0.0.1:$1/ready" >/dev/null && return 0
        if ! kill -0 "$2" 2>/dev/null; then
            echo "server exited before ready; the end of $3:" >&2
            tail -n 20 "$3" >&2
            return 1
        fi
        sleep 0.5
    done
    echo "server not ready after 300 s; see $3" >&2
    return 1
}

# A kernel variant's TESSERA_KERNEL_DEFINES value: "-" (the kernels as committed) stands for none.
defines_of() { [ "$1" = "-" ] || echo "$1"; }
