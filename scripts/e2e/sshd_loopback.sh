# shellcheck shell=bash
# A private sshd on 127.0.0.1 for tests: its own host key, client key, port, config and pid file
# under one directory; nothing system-wide is read or changed (except creating the empty
# privilege-separation directory /run/sshd when run as root, which OpenSSH requires).
#
#   source scripts/e2e/sshd_loopback.sh
#   sshd_loopback_start DIR ALIAS...   # writes DIR/ssh_config where every ALIAS is this sshd
#   ssh -F DIR/ssh_config ALIAS true
#   sshd_loopback_stop DIR
#
# Needs sshd (Debian: openssh-server), ssh and ssh-keygen.

sshd_loopback_find() {
    local candidate
    for candidate in "$(command -v sshd 2>/dev/null)" /usr/sbin/sshd /usr/local/sbin/sshd; do
        if [ -n "$candidate" ] && [ -x "$candidate" ]; then
            echo "$candidate"
            return 0
        fi
    done
    return 1
}

sshd_loopback_start() {
    local dir=$1 sshd port attempt user
    shift
    sshd=$(sshd_loopback_find) || {
        echo "sshd not found: install openssh-server (apt-get install openssh-server)" >&2
        return 1
    }
    user=$(id -un)
    mkdir -p "$dir"
    chmod 700 "$dir"
    ssh-keygen -q -t ed25519 -N '' -f "$dir/host_key" </dev/null
    ssh-keygen -q -t ed25519 -N '' -f "$dir/client_key" </dev/null
    cp "$dir/client_key.pub" "$dir/authorized_keys"
    [ "$(id -u)" -ne 0 ] || mkdir -p /run/sshd
    for attempt in 1 2 3 4 5; do
        port=$((20000 + (RANDOM % 20000)))
        cat >"$dir/sshd_config" <<EOF
Port $port
ListenAddress 127.0.0.1
HostKey $dir/host_key
PidFile $dir/sshd.pid
AuthorizedKeysFile $dir/authorized_keys
AllowUsers $user
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
PermitRootLogin prohibit-password
UsePAM no
StrictModes no
PrintMotd no
LogLevel ERROR
EOF
        "$sshd" -D -e -f "$dir/sshd_config" 2>>"$dir/sshd.log" &
        echo $! >"$dir/sshd.pid.launch"
        cat >"$dir/ssh_config" <<EOF
Host $*
    HostName 127.0.0.1
    Port $port
    User $user
    IdentityFile $dir/client_key
    IdentitiesOnly yes
    StrictHostKeyChecking no
    UserKnownHostsFile /dev/null
    LogLevel ERROR
    ConnectTimeout 5
EOF
        local tries
        for tries in $(seq 1 50); do
            if ssh -F "$dir/ssh_config" -o BatchMode=yes "$1" true 2>/dev/null; then
                return 0
            fi
            kill -0 "$(cat "$dir/sshd.pid.launch")" 2>/dev/null || break
            sleep 0.1
        done
        echo "sshd on port $port did not come up (attempt $attempt/$tries tries): $(tail -n 3 "$dir/sshd.log")" >&2
        sshd_loopback_stop "$dir"
    done
    return 1
}

sshd_loopback_stop() {
    local dir=$1 pid
    [ -f "$dir/sshd.pid.launch" ] || return 0
    pid=$(cat "$dir/sshd.pid.launch")
    kill "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
    rm -f "$dir/sshd.pid.launch"
}
