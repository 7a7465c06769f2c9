#!/usr/bin/env bash
# A throw-away 3-node RabbitMQ cluster with TLS on 127.0.0.1, beside the machine's own node
# (rabbit@localhost at :5672, epmd :4369), which this script never touches: own node names, own
# ports, own epmd (:4370), own cookie under a private HOME, own config and data directories.
# The facts behind each choice are in ../shared/reference/rabbit-cluster.md (the pitfalls it
# numbers are cited below as "pitfall N").
#
# usage: rabbit-cluster.sh start            fresh cluster; prints KEY=value lines to eval
#        rabbit-cluster.sh ensure [--stop-with PID]
#                                           reuse a running cluster, else start one (and with
#                                           --stop-with, stop it once process PID has exited)
#        rabbit-cluster.sh env              the KEY=value lines of the cluster
#        rabbit-cluster.sh stop             graceful stop, then SIGKILL; private epmd too
#        rabbit-cluster.sh kill NODE        SIGKILL one node (tda, tdb or tdc)
#        rabbit-cluster.sh restart NODE...  stop (if running) and start nodes, in parallel
#        rabbit-cluster.sh heal             start every node that is down, in parallel
#        rabbit-cluster.sh ctl NODE|any ARGS...
#                                           rabbitmqctl with that node's environment
#        rabbit-cluster.sh leader QUEUE [VHOST]
#                                           the node leading a quorum queue (e.g. tdb)
#        rabbit-cluster.sh status           pids, ports and the cluster's view of itself
#
# Environment: TDC_STATE (state directory; default <repo>/target/rabbit-cluster, or
# $CARGO_TARGET_DIR/rabbit-cluster), TDC_MGMT=1 (management plugin on 1570x).
# Progress goes to stderr; only the KEY=value lines go to stdout.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
STATE="${TDC_STATE:-${CARGO_TARGET_DIR:-$repo/target}/rabbit-cluster}"
NODES=(tda tdb tdc)
EPMD_PORT=4370
RMQ_BIN=/usr/lib/rabbitmq/bin # pitfall 1: /usr/sbin/* are wrappers that `su rabbitmq`
START_LIMIT=60                # seconds: the whole cluster, or `start` fails
NODE_LIMIT=60                 # seconds: one node (re)starting
STOP_LIMIT=20                 # seconds of graceful stop before SIGKILL

say() { printf '[rabbit-cluster] %s\n' "$*" >&2; }
die() {
    say "error: $*"
    exit 1
}

node_index() {
    case "$1" in
        tda | tda@localhost) echo 1 ;;
        tdb | tdb@localhost) echo 2 ;;
        tdc | tdc@localhost) echo 3 ;;
        *) die "unknown node '$1' (tda, tdb or tdc)" ;;
    esac
}
short() { echo "${1%@localhost}"; }
amqp_port() { echo $((5700 + $(node_index "$1"))); }
amqps_port() { echo $((5770 + $(node_index "$1"))); }
dist_port() { echo $((25700 + $(node_index "$1"))); }
mgmt_port() { echo $((15700 + $(node_index "$1"))); }
ctl_port_min() { echo $((35701 + 10 * ($(node_index "$1") - 1))); }

# Sets up the current (sub)shell as node $1's server or CLI. Inherited RABBITMQ_*/ERL_* variables
# go first: an inherited RABBITMQ_ENV_LOADED=1 makes rabbitmq-env skip everything (pitfall 3).
node_env() {
    local node dir var
    node="$(short "$1")"
    dir="$STATE/$node"
    for var in $(compgen -e); do
        case "$var" in RABBITMQ_* | ERL_*) unset "$var" ;; esac
    done
    export HOME="$STATE/home" # the cookie lives here, not in /root or /var/lib/rabbitmq (pitfall 4)
    export ERL_EPMD_PORT=$EPMD_PORT ERL_EPMD_ADDRESS=127.0.0.1 # private epmd (pitfall 5)
    export ERL_CRASH_DUMP="$dir/log/erl_crash.dump"
    export RABBITMQ_NODENAME="$node@localhost"
    export RABBITMQ_NODE_IP_ADDRESS=127.0.0.1
    export RABBITMQ_NODE_PORT RABBITMQ_DIST_PORT
    RABBITMQ_NODE_PORT="$(amqp_port "$node")"
    RABBITMQ_DIST_PORT="$(dist_port "$node")"
    # All four default into /etc/rabbitmq, which configures the system node (pitfall 2).
    export RABBITMQ_CONF_ENV_FILE="$dir/rabbitmq-env.conf"
    export RABBITMQ_CONFIG_FILE="$dir/rabbitmq.conf"
    export RABBITMQ_CONFIG_FILES="$dir/conf.d"
    export RABBITMQ_ADVANCED_CONFIG_FILE="$dir/advanced.config"
    export RABBITMQ_ENABLED_PLUGINS_FILE="$dir/enabled_plugins"
    export RABBITMQ_MNESIA_BASE="$dir/mnesia"
    export RABBITMQ_MNESIA_DIR="$dir/mnesia/$node@localhost"
    export RABBITMQ_LOG_BASE="$dir/log"
    export RABBITMQ_PID_FILE="$dir/$node.pid"
    export RABBITMQ_CTL_DIST_PORT_MIN RABBITMQ_CTL_DIST_PORT_MAX
    RABBITMQ_CTL_DIST_PORT_MIN="$(ctl_port_min "$node")"
    RABBITMQ_CTL_DIST_PORT_MAX=$((RABBITMQ_CTL_DIST_PORT_MIN + 9))
    # -tdcluster_node marks our server VMs, so they are found by command line even before they
    # write their pid file (pitfall 7).
    export RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS="-kernel inet_dist_use_interface {127,0,0,1} -tdcluster_node $node"
}

# Whether a TCP port on 127.0.0.1 accepts connections (bash /dev/tcp: no CLI VM, pitfall 9).
port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# PIDs of node $1's server VMs, booting or running, of this state directory. A PID counts only
# if its command line is our beam and its environment names our node and our HOME: PIDs wrap
# and a pid file can be stale (pitfall 7).
beam_pids() {
    local node="$1" proc pid
    for proc in /proc/[0-9]*; do
        pid="${proc#/proc/}"
        is_our_beam "$pid" "$node" && echo "$pid"
    done
    return 0
}

is_our_beam() {
    local pid="$1" node="$2" comm cmdline environ
    # comm first, with no fork: this runs for every process on the machine.
    read -r comm 2>/dev/null <"/proc/$pid/comm" || return 1
    [ "$comm" = beam.smp ] || return 1
    cmdline="$(tr '\0' ' ' 2>/dev/null <"/proc/$pid/cmdline")" || return 1
    case "$cmdline" in *beam.smp*"-tdcluster_node $node "*) ;; *) return 1 ;; esac
    environ="$(tr '\0' '\n' 2>/dev/null <"/proc/$pid/environ")" || return 1
    grep -qxF "RABBITMQ_NODENAME=$node@localhost" <<<"$environ" &&
        grep -qxF "HOME=$STATE/home" <<<"$environ"
}

# Signals node $1's VMs with $2, each checked again just before the signal.
signal_node() {
    local node="$1" sig="$2" pid
    for pid in $(beam_pids "$node"); do
        is_our_beam "$pid" "$node" && kill "-$sig" "$pid" 2>/dev/null || true
    done
}

# Waits up to $2 seconds until node $1 has no VM left.
wait_gone() {
    local node="$1" deadline=$((SECONDS + $2))
    while [ -n "$(beam_pids "$node")" ]; do
        [ "$SECONDS" -lt "$deadline" ] || return 1
        sleep 0.1
    done
}

node_running() { [ -n "$(beam_pids "$1")" ] && port_open "$(amqp_port "$1")"; }

# Graceful stop of nodes "$@" together (SIGTERM makes RabbitMQ shut down cleanly), then SIGKILL
# for any that outlive STOP_LIMIT.
stop_nodes() {
    local node
    for node in "$@"; do signal_node "$node" TERM; done
    for node in "$@"; do
        if ! wait_gone "$node" "$STOP_LIMIT"; then
            say "$node did not stop within ${STOP_LIMIT}s: SIGKILL"
            signal_node "$node" KILL
            wait_gone "$node" 5 || die "$node survives SIGKILL"
        fi
    done
}

epmd_pids() {
    local proc pid environ comm
    for proc in /proc/[0-9]*; do
        pid="${proc#/proc/}"
        read -r comm 2>/dev/null <"/proc/$pid/comm" && [ "$comm" = epmd ] || continue
        environ="$(tr '\0' '\n' 2>/dev/null <"/proc/$pid/environ")" || continue
        grep -qxF "ERL_EPMD_PORT=$EPMD_PORT" <<<"$environ" &&
            grep -qxF "HOME=$STATE/home" <<<"$environ" && echo "$pid"
    done
    return 0
}

stop_epmd() {
    local pid
    # Only the epmd we started (checked by its environment), never whatever else has the port:
    # asked politely first, then signalled.
    [ -n "$(epmd_pids)" ] || return 0
    (node_env tda && epmd -port "$EPMD_PORT" -kill >/dev/null 2>&1) || true
    for pid in $(epmd_pids); do kill -TERM "$pid" 2>/dev/null || true; done
}

start_epmd() {
    port_open "$EPMD_PORT" && return 0
    # Its stdio closed, so a caller reading this script's output sees the end of it.
    (node_env tda && epmd -address 127.0.0.1 -port "$EPMD_PORT" -daemon </dev/null >/dev/null 2>&1)
    local deadline=$((SECONDS + 10))
    until port_open "$EPMD_PORT"; do
        [ "$SECONDS" -lt "$deadline" ] || die "the private epmd did not listen on :$EPMD_PORT"
        sleep 0.05
    done
}

make_certs() {
    local certs="$STATE/certs"
    if [ -s "$certs/ca.pem" ] && [ -s "$certs/server.pem" ] && [ -s "$certs/client.pem" ] &&
        [ -s "$certs/wrong-ca.pem" ]; then
        return 0 # kept across fresh starts: RSA keys cost most of a second each
    fi
    say "making certificates in $certs"
    rm -rf "$certs"
    mkdir -p "$certs"
    (
        cd "$certs"
        # Extensions that strict verifiers (rustls/webpki) insist on: a CA with basicConstraints
        # and keyCertSign; leaves with SKI/AKI, the right EKU, and the names in the SAN.
        cat >server.ext <<'EOF'
basicConstraints = critical, CA:false
keyUsage = critical, digitalSignature, keyEncipherment
extendedKeyUsage = serverAuth
subjectAltName = DNS:localhost, IP:127.0.0.1, IP:::1
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
EOF
        cat >client.ext <<'EOF'
basicConstraints = critical, CA:false
keyUsage = critical, digitalSignature, keyEncipherment
extendedKeyUsage = clientAuth
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
EOF
        make_ca() { # name CN
            openssl req -x509 -new -newkey rsa:2048 -nodes -sha256 -days 3650 \
                -subj "/CN=$2" -keyout "$1.key" -out "$1.pem" \
                -addext "basicConstraints=critical,CA:true" \
                -addext "keyUsage=critical,keyCertSign,cRLSign" \
                -addext "subjectKeyIdentifier=hash" 2>/dev/null
        }
        make_leaf() { # name CN
            openssl req -new -newkey rsa:2048 -nodes -sha256 -subj "/CN=$2" \
                -keyout "$1.key" -out "$1.csr" 2>/dev/null
            openssl x509 -req -in "$1.csr" -CA ca.pem -CAkey ca.key -CAcreateserial \
                -days 3650 -sha256 -extfile "$1.ext" -out "$1.pem" 2>/dev/null
        }
        make_ca ca "tidings test CA"
        make_ca wrong-ca "tidings wrong CA"
        make_leaf server localhost
        make_leaf client tidings-test-client
        rm -f ./*.csr ./*.ext ca.srl wrong-ca.key
        chmod 600 ./*.key
    ) || die "openssl failed to make the certificates"
}

write_node_config() {
    local node="$1" dir="$STATE/$1" certs="$STATE/certs"
    mkdir -p "$dir/conf.d" "$dir/mnesia" "$dir/log"
    : >"$dir/rabbitmq-env.conf"
    echo '[].' >"$dir/advanced.config"
    if [ "${TDC_MGMT:-0}" = 1 ]; then
        echo '[rabbitmq_management].' >"$dir/enabled_plugins"
    else
        echo '[].' >"$dir/enabled_plugins"
    fi
    {
        echo "listeners.tcp.default = 127.0.0.1:$(amqp_port "$node")"
        echo "listeners.ssl.default = 127.0.0.1:$(amqps_port "$node")"
        echo "ssl_options.cacertfile = $certs/ca.pem"
        echo "ssl_options.certfile = $certs/server.pem"
        echo "ssl_options.keyfile = $certs/server.key"
        # A client without a certificate is accepted; one from another CA is refused.
        echo "ssl_options.verify = verify_peer"
        echo "ssl_options.fail_if_no_peer_cert = false"
        echo "log.console = false"
        echo "log.file.level = info"
        echo "cluster_formation.peer_discovery_backend = classic_config"
        if [ "$node" != tda ]; then
            # Only the seed is listed, and joiners retry for 30 s: nodes booting together
            # otherwise form clusters of their own (pitfall 6).
            echo "cluster_formation.classic_config.nodes.1 = tda@localhost"
            echo "cluster_formation.discovery_retry_limit = 60"
            echo "cluster_formation.discovery_retry_interval = 500"
        fi
        if [ "${TDC_MGMT:-0}" = 1 ]; then
            echo "management.tcp.ip = 127.0.0.1"
            echo "management.tcp.port = $(mgmt_port "$node")"
        fi
    } >"$dir/rabbitmq.conf"
}

# Launches node $1's server in the background, detached from this shell's session, and returns
# once its launcher runs with the node's environment. The launcher writes its own pid: `$!` names
# a fork whose /proc environ is still this script's until it execs (a check made in that moment
# took a booting node for a dead one), and setsid forks again where it leads a process group.
launch() {
    local node="$1" pidfile="$STATE/$1/launcher.pid" deadline=$((SECONDS + 10))
    rm -f "$pidfile" "$pidfile.tmp"
    (
        node_env "$node"
        cd "$STATE/$node"
        # $$, $1 and $2 are the launched shell's own.
        setsid nohup bash -c 'echo $$ >"$1.tmp" && mv "$1.tmp" "$1" && exec "$2"' launch \
            "$pidfile" "$RMQ_BIN/rabbitmq-server" >>"$STATE/$node/log/server.out" 2>&1 </dev/null &
    )
    until [ -s "$pidfile" ]; do
        [ "$SECONDS" -lt "$deadline" ] || die "$node's launcher did not start (see $STATE/$node/log/server.out)"
        sleep 0.02
    done
}

# Whether node $1's launcher (the rabbitmq-server shell, parent of the VM) still runs: the VM
# appears only a moment after the launch.
launcher_alive() {
    local node="$1" pid environ
    read -r pid 2>/dev/null <"$STATE/$node/launcher.pid" || return 1
    environ="$(tr '\0' '\n' 2>/dev/null <"/proc/$pid/environ")" || return 1
    grep -qxF "RABBITMQ_NODENAME=$node@localhost" <<<"$environ" &&
        grep -qxF "HOME=$STATE/home" <<<"$environ"
}

# Waits until the AMQP listeners of nodes "$@" open (the end of boot), up to $DEADLINE (SECONDS).
wait_listening() {
    local node gone
    for node in "$@"; do
        gone=0
        until port_open "$(amqp_port "$node")"; do
            # Gone only when seen gone twice in a row: the launcher's exec of the server shell
            # and the server's of its VM are moments in which neither is found.
            if [ -z "$(beam_pids "$node")" ] && ! launcher_alive "$node"; then
                gone=$((gone + 1))
            else
                gone=0
            fi
            if [ "$gone" -ge 2 ]; then
                say "$node exited while booting; the end of its logs:"
                tail -n 20 "$STATE/$node/log/server.out" "$STATE/$node/log/$node@localhost.log" >&2 2>/dev/null || true
                return 1
            fi
            if [ "$SECONDS" -ge "$DEADLINE" ]; then
                say "$node is not listening on :$(amqp_port "$node") in time"
                return 1
            fi
            sleep 0.1
        done
    done
}

# Nodes and epmd of this script's clusters run from another state directory (another clone
# of the repository, a run killed before its stop): they hold our ports. Recognised by the
# marker every node carries (`-tdcluster_node`) and by epmd's private port, never by port alone.
stop_strays() {
    local proc pid cmdline environ comm stopped=0
    for proc in /proc/[0-9]*; do
        pid="${proc#/proc/}"
        [ "$pid" = "$$" ] && continue
        cmdline="$(tr '\0' ' ' 2>/dev/null <"/proc/$pid/cmdline")" || continue
        read -r comm 2>/dev/null <"/proc/$pid/comm" || continue
        if [ "$comm" = beam.smp ] && [[ "$cmdline" == *"-tdcluster_node "* ]]; then
            kill -KILL "$pid" 2>/dev/null && stopped=1
        elif [ "$comm" = epmd ]; then
            environ="$(tr '\0' '\n' 2>/dev/null <"/proc/$pid/environ")" || continue
            grep -qxF "ERL_EPMD_PORT=$EPMD_PORT" <<<"$environ" && kill -TERM "$pid" 2>/dev/null && stopped=1
        fi
    done
    [ "$stopped" = 1 ] || return 0
    say "stopped nodes or epmd left by another state directory"
    local deadline=$((SECONDS + 10))
    while port_open "$EPMD_PORT" || port_open "$(amqp_port tda)"; do
        [ "$SECONDS" -lt "$deadline" ] || break
        sleep 0.1
    done
}

# Fails unless every port we bind is free, before anything is launched (pitfall 8).
check_ports_free() {
    local node port busy=()
    port_open "$EPMD_PORT" && busy+=("$EPMD_PORT (epmd)")
    for node in "${NODES[@]}"; do
        for port in "$(amqp_port "$node")" "$(amqps_port "$node")" "$(dist_port "$node")"; do
            port_open "$port" && busy+=("$port ($node)")
        done
        if [ "${TDC_MGMT:-0}" = 1 ]; then
            port="$(mgmt_port "$node")"
            port_open "$port" && busy+=("$port ($node mgmt)")
        fi
    done
    [ ${#busy[@]} -eq 0 ] || die "ports in use by something else: ${busy[*]}"
}

ctl() {
    local node="$1"
    shift
    if [ "$node" = any ]; then
        local candidate
        node=""
        for candidate in "${NODES[@]}"; do
            if node_running "$candidate"; then
                node="$candidate"
                break
            fi
        done
        [ -n "$node" ] || die "no node of the cluster is running"
    fi
    node="$(short "$node")"
    node_index "$node" >/dev/null
    (node_env "$node" && exec "$RMQ_BIN/rabbitmqctl" -n "$node@localhost" "$@")
}

# One cluster_status call (a CLI VM costs ~0.5 s, pitfall 9), parsed as JSON (pitfall 10).
running_nodes() {
    ctl "${1:-any}" -q cluster_status --formatter json |
        tr -d '\n ' | grep -o '"running_nodes":\[[^]]*\]' | grep -o 'td[abc]@localhost' | sort -u
}

# One KEY=value line; a value with characters the shell's eval would split on is quoted.
kv() {
    if [[ "$2" =~ ^[A-Za-z0-9_./:@%,=+-]*$ ]]; then
        printf '%s=%s\n' "$1" "$2"
    else
        printf '%s=%q\n' "$1" "$2"
    fi
}

print_env() {
    local node upper hosts="" tls_hosts=""
    for node in "${NODES[@]}"; do
        hosts+="${hosts:+,}guest:guest@127.0.0.1:$(amqp_port "$node")"
        tls_hosts+="${tls_hosts:+,}guest:guest@127.0.0.1:$(amqps_port "$node")"
    done
    kv TDC_STATE "$STATE"
    kv TDC_SCRIPT "$here/$(basename "${BASH_SOURCE[0]}")"
    kv TDC_NODES "$(IFS=,; echo "${NODES[*]}")"
    kv TDC_TRANSPORT_URL "rabbit://$hosts/"
    # Plain hosts: the TLS options (ssl=1, ssl_ca_file=$TDC_CA) are the caller's to add.
    kv TDC_TRANSPORT_URL_TLS "rabbit://$tls_hosts/"
    for node in "${NODES[@]}"; do
        upper="$(tr '[:lower:]' '[:upper:]' <<<"$node")"
        kv "TDC_AMQP_URL_$upper" "amqp://guest:guest@127.0.0.1:$(amqp_port "$node")/%2F"
        kv "TDC_AMQPS_URL_$upper" "amqps://guest:guest@localhost:$(amqps_port "$node")/%2F"
    done
    kv TDC_CA "$STATE/certs/ca.pem"
    kv TDC_CLIENT_CERT "$STATE/certs/client.pem"
    kv TDC_CLIENT_KEY "$STATE/certs/client.key"
    kv TDC_WRONG_CA "$STATE/certs/wrong-ca.pem"
}

cmd_start() {
    local started=$SECONDS node
    command -v openssl >/dev/null || die "openssl is missing (apt-get install openssl)"
    command -v epmd >/dev/null || die "epmd is missing (it comes with rabbitmq-server)"
    [ -x "$RMQ_BIN/rabbitmq-server" ] || die "$RMQ_BIN/rabbitmq-server is missing (apt-get install rabbitmq-server)"
    # Leftovers of an earlier run in this state directory go first; then a clean slate
    # (pitfall 11), keeping only the certificates.
    cmd_stop
    stop_strays
    check_ports_free
    mkdir -p "$STATE"
    for node in "${NODES[@]}"; do rm -rf "${STATE:?}/$node"; done
    rm -rf "$STATE/home"
    mkdir -p "$STATE/home"
    chmod 700 "$STATE/home"
    # Our own cookie, so a CLI call aimed at the wrong node cannot authenticate (pitfall 4).
    head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n' >"$STATE/home/.erlang.cookie"
    chmod 400 "$STATE/home/.erlang.cookie"
    make_certs
    for node in "${NODES[@]}"; do write_node_config "$node"; done
    start_epmd
    DEADLINE=$((started + START_LIMIT))
    # The seed boots alone, then the two joiners together (pitfall 6).
    launch tda
    wait_listening tda || fail_start
    say "tda up after $((SECONDS - started)) s"
    launch tdb
    launch tdc
    wait_listening tdb tdc || fail_start
    local running
    running="$(running_nodes tda | tr '\n' ' ')"
    [ "$running" = "tda@localhost tdb@localhost tdc@localhost " ] ||
        fail_start "the cluster runs [${running% }], not all three nodes"
    say "3 nodes clustered after $((SECONDS - started)) s (state in $STATE)"
    print_env
}

fail_start() {
    [ $# -eq 0 ] || say "$*"
    say "start failed; stopping what was started (logs stay in $STATE/<node>/log)"
    cmd_stop
    exit 1
}

cmd_stop() {
    stop_nodes "${NODES[@]}"
    stop_epmd
    say "stopped"
}

cmd_kill() {
    local node
    node="$(short "$1")"
    node_index "$node" >/dev/null
    [ -n "$(beam_pids "$node")" ] || die "$node is not running"
    signal_node "$node" KILL
    wait_gone "$node" 10 || die "$node survives SIGKILL"
    say "$node killed"
}

# Restarts nodes "$@" together: a restarted node rejoins the cluster with its data, and nodes
# that were down together must boot together (pitfall 11). The rest of the cluster must be up
# (pitfall 12).
cmd_restart() {
    local started=$SECONDS node nodes=()
    for node in "$@"; do
        node="$(short "$node")"
        node_index "$node" >/dev/null
        nodes+=("$node")
    done
    [ ${#nodes[@]} -gt 0 ] || die "restart which node?"
    stop_nodes "${nodes[@]}"
    start_epmd
    for node in "${nodes[@]}"; do launch "$node"; done
    DEADLINE=$((SECONDS + NODE_LIMIT))
    wait_listening "${nodes[@]}" || die "${nodes[*]} did not come back"
    say "${nodes[*]} up after $((SECONDS - started)) s"
}

cmd_heal() {
    local node down=()
    for node in "${NODES[@]}"; do node_running "$node" || down+=("$node"); done
    [ ${#down[@]} -eq 0 ] || cmd_restart "${down[@]}"
}

cmd_leader() {
    local queue="$1" vhost="${2:-/}" rows leader
    rows="$(ctl any -q list_queues -p "$vhost" name type leader --formatter json | tr -d '\n')"
    # One object per queue: {"name":"…","type":"quorum","leader":"tdb@localhost"}
    leader="$(sed 's/},{/}\n{/g' <<<"$rows" | grep -F "\"name\":\"$queue\"" |
        grep -o '"leader":"[^"]*"' | cut -d'"' -f4 || true)"
    [ -n "$leader" ] || die "no leader for queue '$queue' in vhost '$vhost' (is it a quorum queue?): $rows"
    short "$leader"
}

cmd_status() {
    local node pids
    for node in "${NODES[@]}"; do
        pids="$(beam_pids "$node" | tr '\n' ' ')"
        if port_open "$(amqp_port "$node")"; then
            echo "$node: pid ${pids% }, listening on :$(amqp_port "$node") and :$(amqps_port "$node")"
        elif [ -n "$pids" ]; then
            echo "$node: pid ${pids% }, not listening (booting or stopping)"
        else
            echo "$node: down"
        fi
    done
    if port_open "$EPMD_PORT"; then echo "epmd: :$EPMD_PORT"; else echo "epmd: down"; fi
    echo "running nodes: $(running_nodes any 2>/dev/null | tr '\n' ' ')"
}

all_running() {
    local node
    for node in "${NODES[@]}"; do node_running "$node" || return 1; done
}

# Stops the cluster in the background once process $1 has exited (a test run that started it).
stop_with() {
    local owner="$1"
    setsid nohup bash -c '
        while kill -0 "$1" 2>/dev/null; do sleep 1; done
        exec "$2" stop' stop-with "$owner" "$here/$(basename "${BASH_SOURCE[0]}")" \
        >>"$STATE/stop-with.log" 2>&1 </dev/null &
}

cmd_ensure() {
    local owner=""
    if [ "${1:-}" = --stop-with ]; then owner="${2:?--stop-with needs a PID}"; fi
    if all_running && [ -s "$STATE/certs/ca.pem" ]; then
        say "reusing the running cluster in $STATE"
        print_env
        return 0
    fi
    cmd_start
    [ -z "$owner" ] || stop_with "$owner"
}

main() {
    local command="${1:-}"
    [ $# -eq 0 ] || shift
    case "$command" in
        start) cmd_start ;;
        ensure) cmd_ensure "$@" ;;
        env) print_env ;;
        stop) cmd_stop ;;
        kill) cmd_kill "${1:?kill which node?}" ;;
        restart) cmd_restart "$@" ;;
        heal) cmd_heal ;;
        ctl) ctl "${1:?ctl needs a node (or any)}" "${@:2}" ;;
        leader) cmd_leader "${1:?leader of which queue?}" "${2:-/}" ;;
        status) cmd_status ;;
        *)
            sed -n '/^# usage:/,/^# Progress/p' "${BASH_SOURCE[0]}" >&2
            exit 2
            ;;
    esac
}

main "$@"
