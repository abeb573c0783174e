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

# A variant is "-" (the kernels as committed) or words: NAME=VALUE definitions for
# TESSERA_KERNEL_DEFINES, and TESSERA_*=VALUE environment settings (e.g.
# TESSERA_PREFILL_ATTENTION=r16, a kernel the launcher picks). defines_of prints the first,
# env_of the second.
defines_of() { words_of "$1" | grep -v '^TESSERA_' | tr '\n' ' ' | sed 's/ $//'; }
env_of() { words_of "$1" | grep '^TESSERA_' | tr '\n' ' ' | sed 's/ $//'; }
words_of() { [ "$1" = "-" ] || tr -s ' ' '\n' <<<"$1" | grep -v '^$'; }
