#!/usr/bin/env bash
# A private salt-master on 127.0.0.1 whose config, keys, cache, sockets and logs all live
# under DIR. Ports are picked free at first start, so parallel runs do not collide.
#
#   scripts/dev-master.sh start DIR      (SALT_VERSION=3007.17 by default)
#   scripts/dev-master.sh stop DIR
#   scripts/dev-master.sh env DIR        prints SALT_VENV, SALT_CONFIG_DIR, ports
#   MASTER_EXTRA_CONF='key: value' appends options to a new config
#   MASTER_INTERFACE=0.0.0.0 listens there instead of 127.0.0.1 (a new config; the lab's
#   network namespace, integration/harness/lab.rs, where guests reach it on a bridge), or
#   on another loopback address (127.0.0.2: two cluster nodes on one machine)
#
# Then: $SALT_VENV/bin/salt -c DIR '*' test.ping
set -euo pipefail

cmd=${1:-}; dir=${2:-}
[ -n "$cmd" ] && [ -n "$dir" ] || { sed -n '2,10p' "$0"; exit 2; }
CACHE=${VIRTSEED_CACHE:-$HOME/.cache/virtseed}
SALT_VERSION=${SALT_VERSION:-3007.17}
venv=$CACHE/salt-$SALT_VERSION
mkdir -p "$dir"
dir=$(cd "$dir" && pwd)

free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

write_config() {
    [ -f "$dir/master" ] && return
    local pub ret
    pub=$(free_port); ret=$(free_port)
    while [ "$ret" = "$pub" ]; do ret=$(free_port); done
    mkdir -p "$dir"/{pki/master,cache,sock,log,run,srv/salt,srv/pillar,extmods}
    # No root_dir: Salt would nest every path below under it.
    cat > "$dir/master" <<CONF
# private test master written by virtseed's scripts/dev-master.sh
interface: ${MASTER_INTERFACE:-127.0.0.1}
publish_port: $pub
ret_port: $ret
user: $(id -un)
pki_dir: $dir/pki/master
cachedir: $dir/cache
sock_dir: $dir/sock
extension_modules: $dir/extmods
pidfile: $dir/run/salt-master.pid
log_file: $dir/log/master
key_logfile: $dir/log/key
log_level_logfile: info
file_roots:
  base: [$dir/srv/salt]
pillar_roots:
  base: [$dir/srv/pillar]
worker_threads: 2
# Maintenance (AES key rotation after a key is deleted) every second, not every minute.
loop_interval: 1
CONF
    # Extra master options for one test (e.g. fast ZMTP heartbeats), verbatim YAML.
    [ -z "${MASTER_EXTRA_CONF:-}" ] || printf '%s\n' "$MASTER_EXTRA_CONF" >> "$dir/master"
    echo "$SALT_VERSION" > "$dir/salt-version"
}

pid_of() {
    local p
    p=$(cat "$dir/run/salt-master.pid" 2>/dev/null) || return 1
    kill -0 "$p" 2>/dev/null && echo "$p"
}

port_of() { awk -v k="$1:" '$1==k {print $2}' "$dir/master"; }

case $cmd in
start)
    [ -x "$venv/bin/salt-master" ] || { echo "no Salt $SALT_VERSION at $venv: run SALT_VERSIONS=$SALT_VERSION scripts/setup.sh" >&2; exit 1; }
    write_config
    if pid_of >/dev/null; then echo "master already running in $dir"; exit 0; fi
    "$venv/bin/salt-master" -c "$dir" -d
    ret=$(port_of ret_port)
    addr=$(port_of interface); [ "$addr" != 0.0.0.0 ] || addr=127.0.0.1
    for _ in $(seq 300); do
        if [ -S "$dir/sock/master_event_pub.ipc" ] && [ -f "$dir/cache/.root_key" ] &&
           python3 -c "import socket,sys; s=socket.socket(); s.settimeout(0.2); sys.exit(s.connect_ex(('$addr',$ret)))"; then
            echo "salt-master $SALT_VERSION on $(port_of interface):$ret (publish $(port_of publish_port)), config $dir"
            exit 0
        fi
        sleep 0.1
    done
    echo "salt-master did not come up; see $dir/log/master" >&2
    tail -20 "$dir/log/master" >&2 || true
    exit 1
    ;;
stop)
    if p=$(pid_of); then
        kill "$p" 2>/dev/null || true
        for _ in $(seq 100); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
        kill -9 "$p" 2>/dev/null || true
        # The master's children (workers, publisher) go with it; mop up any left.
        pkill -9 -f "salt-master -c $dir( |$)" 2>/dev/null || true
        echo "stopped salt-master in $dir"
    fi
    ;;
env)
    echo "SALT_VENV=$venv"
    echo "SALT_CONFIG_DIR=$dir"
    echo "SALT_RET_PORT=$(port_of ret_port)"
    echo "SALT_PUBLISH_PORT=$(port_of publish_port)"
    ;;
*) sed -n '2,10p' "$0"; exit 2 ;;
esac
