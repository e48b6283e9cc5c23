#!/usr/bin/env bash
# A real single-node Kubernetes cluster on this machine, without Docker:
#   e2e/node/node.sh up      start it (idempotent: a running node is left alone)
#   e2e/node/node.sh down    stop every process it started, by PID, and restore the host
#   e2e/node/node.sh guard   print the egress guard's counters; exit 1 if it dropped a packet
# etcd, kube-apiserver, kube-controller-manager, kube-scheduler, kubelet, kube-proxy
# (built by scripts/control-plane.sh --node), Debian's containerd, runc and CNI plugins,
# and CoreDNS for cluster DNS. The node's IP is a bridge of its own (10.252.0.1/24), which
# is also the CNI gateway and the API server's address, so nothing listens on the machine's
# real interfaces; pods reach the API server through the `kubernetes` Service.
#
# Host changes (bridge, sysctls, iptables, cgroups, the kubelet's and CNI's fixed paths)
# are recorded before they are made and undone by `down`, also after a failed `up`.
# State, logs and PIDs live in $REMORA_NODE_DIR (default /tmp/remora-node); the
# kubeconfig is $REMORA_NODE_DIR/admin.kubeconfig. Needs root.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/../.." && pwd)
NODE=${REMORA_NODE_DIR:-/tmp/remora-node}
NODE_NAME=node-1
NODE_IP=10.252.0.1
POD_CIDR=10.252.0.0/24
SERVICE_CIDR=10.252.128.0/17
KUBERNETES_SERVICE_IP=10.252.128.1
DNS_IP=$NODE_IP
MESH_RANGE=10.252.0.0/16
BRIDGE=remora0
GUARD=REMORA-NODE-EGRESS
API_PORT=16443
ETCD_PORT=12379

say() { printf 'node: %s\n' "$*" >&2; }
die() { printf 'node: FAILED: %s\n' "$*" >&2; exit 1; }

export PATH=$PATH:/usr/sbin:/sbin

# ---------------------------------------------------------------- processes

pid_of() { cat "$NODE/pids/$1" 2>/dev/null || true; }
alive() { local pid; pid=$(pid_of "$1"); [[ -n $pid ]] && kill -0 "$pid" 2>/dev/null; }

# start NAME CMD...: runs CMD in its own session, logs to $NODE/logs/NAME.log.
start() {
  local name=$1; shift
  if alive "$name"; then return; fi
  setsid "$@" >"$NODE/logs/$name.log" 2>&1 < /dev/null &
  echo $! >"$NODE/pids/$name"
}

stop() {
  local name=$1 pid
  pid=$(pid_of "$name")
  [[ -n $pid ]] || return 0
  if kill -0 "$pid" 2>/dev/null; then
    kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL -- "-$pid" 2>/dev/null || kill -KILL "$pid" 2>/dev/null || true
  fi
  rm -f "$NODE/pids/$name"
}

# wait_for WHAT SECONDS CMD...: polls CMD until it succeeds; on timeout names WHAT and
# prints the tail of the matching log.
wait_for() {
  local what=$1 secs=$2 log=$3; shift 3
  local deadline=$((SECONDS + secs))
  until "$@" >/dev/null 2>&1; do
    if (( SECONDS > deadline )); then
      [[ -f $NODE/logs/$log.log ]] && tail -n 30 "$NODE/logs/$log.log" >&2
      die "$what did not happen within ${secs}s (log: $NODE/logs/$log.log)"
    fi
    if [[ -n $log ]] && [[ -f $NODE/pids/$log ]] && ! alive "$log"; then
      tail -n 30 "$NODE/logs/$log.log" >&2
      die "$log exited while waiting for $what (log: $NODE/logs/$log.log)"
    fi
    sleep 0.2
  done
}

kctl() { "$BIN/kubectl" --kubeconfig "$NODE/admin.kubeconfig" "$@"; }

# ---------------------------------------------------------------- host changes

# record KEY VALUE: remembers the host's state before the first change.
record() { grep -q "^$1 " "$NODE/host-before" 2>/dev/null || echo "$1 $2" >>"$NODE/host-before"; }

set_sysctl() {
  local key=$1 value=$2
  record "sysctl:$key" "$(sysctl -n "$key")"
  sysctl -q -w "$key=$value"
}

real_interfaces() {
  ip -o link show | awk -F': ' '{print $2}' | sed 's/@.*//' |
    grep -Ev "^(lo|$BRIDGE|veth.*)$" || true
}

install_guard() {
  # Anything from the node's ranges that would leave through a real interface is
  # dropped and counted, in mangle POSTROUTING (kube-proxy never touches it, and it
  # sees forwarded and locally sent packets alike, before any SNAT).
  iptables -t mangle -N "$GUARD" 2>/dev/null || iptables -t mangle -F "$GUARD"
  local iface
  for iface in $(real_interfaces); do
    iptables -t mangle -A "$GUARD" -o "$iface" -s "$MESH_RANGE" -j DROP
    iptables -t mangle -A "$GUARD" -o "$iface" -d "$SERVICE_CIDR" -j DROP
  done
  iptables -t mangle -C POSTROUTING -j "$GUARD" 2>/dev/null ||
    iptables -t mangle -I POSTROUTING 1 -j "$GUARD"
}

check_guard() {
  [[ $(iptables -t mangle -S POSTROUTING | sed -n 2p) == "-A POSTROUTING -j $GUARD" ]] ||
    die "the egress guard is not the first rule of mangle POSTROUTING any more"
}

# Prints "dropped <packets>" and the rules with their counters.
guard_counters() {
  iptables -t mangle -L "$GUARD" -n -v -x 2>/dev/null | awk 'NR > 2 {n += $1} END {print "dropped " n+0}'
  iptables -t mangle -L "$GUARD" -n -v -x 2>/dev/null | sed 1,2d >&2 || true
}

# ---------------------------------------------------------------- PKI

cert() {
  # cert NAME CN [O] [SAN]: a client or serving certificate signed by the node CA.
  local name=$1 cn=$2 org=${3:-} san=${4:-}
  [[ -f $NODE/pki/$name.crt ]] && return
  local subj="/CN=$cn"
  [[ -n $org ]] && subj="/O=$org$subj"
  openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
    -keyout "$NODE/pki/$name.key" -subj "$subj" -out "$NODE/pki/$name.csr" 2>/dev/null
  local ext="$NODE/pki/$name.ext"
  {
    echo "basicConstraints=CA:FALSE"
    echo "keyUsage=digitalSignature,keyEncipherment"
    echo "extendedKeyUsage=clientAuth,serverAuth"
    [[ -n $san ]] && echo "subjectAltName=$san"
  } >"$ext"
  openssl x509 -req -in "$NODE/pki/$name.csr" -CA "$NODE/pki/ca.crt" -CAkey "$NODE/pki/ca.key" \
    -CAcreateserial -days 30 -extfile "$ext" -out "$NODE/pki/$name.crt" 2>/dev/null
  rm -f "$NODE/pki/$name.csr" "$ext"
}

kubeconfig() {
  # kubeconfig NAME CERT: a kubeconfig that authenticates with pki/CERT.{crt,key}.
  cat >"$NODE/$1.kubeconfig" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: node
  cluster:
    certificate-authority: $NODE/pki/ca.crt
    server: https://$NODE_IP:$API_PORT
users:
- name: $2
  user:
    client-certificate: $NODE/pki/$2.crt
    client-key: $NODE/pki/$2.key
contexts:
- name: remora-node
  context: {cluster: node, user: $2}
current-context: remora-node
EOF
}

pki() {
  mkdir -p "$NODE/pki"
  if [[ ! -f $NODE/pki/ca.crt ]]; then
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 30 \
      -keyout "$NODE/pki/ca.key" -out "$NODE/pki/ca.crt" -subj "/CN=remora-node-ca" 2>/dev/null
    openssl genrsa -out "$NODE/pki/sa.key" 2048 2>/dev/null
    openssl rsa -in "$NODE/pki/sa.key" -pubout -out "$NODE/pki/sa.pub" 2>/dev/null
  fi
  cert apiserver kube-apiserver "" \
    "IP:$NODE_IP,IP:$KUBERNETES_SERVICE_IP,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local"
  cert admin remora-node-admin system:masters
  cert apiserver-kubelet-client kube-apiserver-kubelet-client system:masters
  cert controller-manager system:kube-controller-manager
  cert scheduler system:kube-scheduler
  cert kubelet "system:node:$NODE_NAME" system:nodes "IP:$NODE_IP,DNS:$NODE_NAME"
  cert kube-proxy system:kube-proxy system:node-proxier
  for c in admin controller-manager scheduler kubelet kube-proxy; do kubeconfig "$c" "$c"; done
}

# ---------------------------------------------------------------- configs

configs() {
  mkdir -p "$NODE/containerd" "$NODE/cni/net.d" "$NODE/cni/ipam" "$NODE/kubelet" "$NODE/coredns"
  cat >"$NODE/containerd/config.toml" <<EOF
version = 2
root = "$NODE/containerd/root"
state = "$NODE/containerd/state"
[grpc]
  address = "$NODE/containerd/containerd.sock"
[ttrpc]
  address = "$NODE/containerd/containerd.sock.ttrpc"
[debug]
  address = "$NODE/containerd/debug.sock"
  level = "info"
[plugins."io.containerd.internal.v1.opt"]
  path = "$NODE/containerd/opt"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "docker.io/remora/pause:1"
  enable_selinux = false
  netns_mounts_under_state_dir = true
  # The machine lacks CAP_SYS_RESOURCE: without this every sandbox fails with
  # "can't get final child's PID from pipe: EOF" (runc cannot lower oom_score_adj).
  restrict_oom_score_adj = true
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
        Root = "$NODE/containerd/runc"
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "$NODE/cni/net.d"
    max_conf_num = 1
EOF
  cat >"$NODE/cni/net.d/10-remora.conflist" <<EOF
{
  "cniVersion": "0.4.0",
  "name": "remora-node",
  "plugins": [
    {
      "type": "bridge",
      "bridge": "$BRIDGE",
      "isGateway": true,
      "ipMasq": false,
      "hairpinMode": true,
      "ipam": {
        "type": "host-local",
        "dataDir": "$NODE/cni/ipam",
        "ranges": [[{"subnet": "$POD_CIDR", "gateway": "$NODE_IP"}]],
        "routes": [{"dst": "0.0.0.0/0"}]
      }
    },
    {"type": "portmap", "capabilities": {"portMappings": true}}
  ]
}
EOF
  # Pods get cluster DNS only: no resolver of the machine leaks into them.
  : >"$NODE/kubelet/resolv.conf"
  cat >"$NODE/kubelet/config.yaml" <<EOF
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
address: $NODE_IP
port: 10250
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: 10248
authentication:
  anonymous: {enabled: false}
  webhook: {enabled: true}
  x509: {clientCAFile: $NODE/pki/ca.crt}
authorization: {mode: Webhook}
cgroupDriver: cgroupfs
failSwapOn: false
containerRuntimeEndpoint: unix://$NODE/containerd/containerd.sock
podLogsDir: $NODE/kubelet/pod-logs
clusterDomain: cluster.local
clusterDNS: [$DNS_IP]
resolvConf: $NODE/kubelet/resolv.conf
tlsCertFile: $NODE/pki/kubelet.crt
tlsPrivateKeyFile: $NODE/pki/kubelet.key
evictionHard: {"memory.available": "100Mi", "nodefs.available": "2%", "imagefs.available": "2%"}
# Imported images have no registry to come back from: never collect them.
imageGCHighThresholdPercent: 99
imageGCLowThresholdPercent: 98
# ConfigMap volumes follow the sync period (default 1 min).
syncFrequency: 10s
maxPods: 60
EOF
  cat >"$NODE/kube-proxy.yaml" <<EOF
apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
clientConnection: {kubeconfig: $NODE/kube-proxy.kubeconfig}
mode: iptables
clusterCIDR: $POD_CIDR
hostnameOverride: $NODE_NAME
bindAddress: $NODE_IP
healthzBindAddress: 127.0.0.1:10256
metricsBindAddress: 127.0.0.1:10249
nodePortAddresses: ["$NODE_IP/32"]
iptables: {localhostNodePorts: false}
conntrack: {maxPerCore: 0, min: 0, tcpEstablishedTimeout: 0s, tcpCloseWaitTimeout: 0s}
EOF
  cat >"$NODE/coredns/Corefile" <<EOF
.:53 {
    bind $DNS_IP
    errors
    health 127.0.0.1:18080
    ready 127.0.0.1:18181
    kubernetes cluster.local in-addr.arpa ip6.arpa {
        kubeconfig $NODE/admin.kubeconfig
        pods insecure
        fallthrough in-addr.arpa ip6.arpa
    }
    cache 5
    loadbalance
}
EOF
}

# ---------------------------------------------------------------- up / down

up() {
  [[ $(id -u) == 0 ]] || die "needs root (it runs the kubelet and containerd)"
  for tool in containerd runc ctr openssl iptables ip sysctl setsid python3 conntrack; do
    command -v "$tool" >/dev/null 2>&1 || die "$tool is not installed; run e2e/node/deps.sh"
  done
  [[ -x /usr/lib/cni/bridge ]] || die "the CNI plugins are not installed; run e2e/node/deps.sh"
  BIN=${REMORA_NODE_BIN:-$("$root/scripts/control-plane.sh" --node)}
  for b in etcd kube-apiserver kube-controller-manager kube-scheduler kubelet kube-proxy coredns pause kubectl; do
    [[ -x $BIN/$b ]] || die "$BIN/$b is missing (scripts/control-plane.sh --node builds it; kubectl comes from scripts/tools.sh)"
  done
  mkdir -p "$NODE/pids" "$NODE/logs"
  echo "$BIN" >"$NODE/bin"
  local t0=$SECONDS

  say "host: bridge $BRIDGE ($NODE_IP/24), sysctls, egress guard"
  if ! ip link show "$BRIDGE" >/dev/null 2>&1; then
    ip link add "$BRIDGE" type bridge
  fi
  ip addr show dev "$BRIDGE" | grep -q "inet $NODE_IP/" || ip addr add "$NODE_IP/24" dev "$BRIDGE"
  ip link set "$BRIDGE" up
  if [[ ! -d /proc/sys/net/bridge ]]; then
    modprobe br_netfilter 2>/dev/null || die "br_netfilter is not available (Services between pods on one bridge need it)"
  fi
  set_sysctl net.ipv4.ip_forward 1
  set_sysctl net.bridge.bridge-nf-call-iptables 1
  # The kubelet sets these itself; recorded here so `down` puts them back.
  local key
  for key in vm.overcommit_memory kernel.panic kernel.panic_on_oops; do
    record "sysctl:$key" "$(sysctl -n "$key")"
  done
  for d in /var/lib/kubelet /var/lib/cni /run/containerd; do
    [[ -e $d ]] || record "path:$d" absent
  done
  install_guard

  pki
  configs

  say "etcd and kube-apiserver"
  start etcd "$BIN/etcd" --name="$NODE_NAME" --data-dir="$NODE/etcd" \
    --listen-client-urls="http://127.0.0.1:$ETCD_PORT" --advertise-client-urls="http://127.0.0.1:$ETCD_PORT" \
    --listen-peer-urls=http://127.0.0.1:12380 --initial-advertise-peer-urls=http://127.0.0.1:12380 \
    --initial-cluster="$NODE_NAME=http://127.0.0.1:12380" --listen-metrics-urls=http://127.0.0.1:12381 \
    --unsafe-no-fsync
  start kube-apiserver "$BIN/kube-apiserver" --etcd-servers="http://127.0.0.1:$ETCD_PORT" \
    --cert-dir="$NODE/apiserver-certs" --secure-port="$API_PORT" \
    --bind-address="$NODE_IP" --advertise-address="$NODE_IP" \
    --tls-cert-file="$NODE/pki/apiserver.crt" --tls-private-key-file="$NODE/pki/apiserver.key" \
    --client-ca-file="$NODE/pki/ca.crt" --service-cluster-ip-range="$SERVICE_CIDR" \
    --allow-privileged=true --authorization-mode=Node,RBAC --enable-admission-plugins=NodeRestriction \
    --service-account-issuer=https://kubernetes.default.svc.cluster.local \
    --service-account-key-file="$NODE/pki/sa.pub" --service-account-signing-key-file="$NODE/pki/sa.key" \
    --kubelet-client-certificate="$NODE/pki/apiserver-kubelet-client.crt" \
    --kubelet-client-key="$NODE/pki/apiserver-kubelet-client.key" \
    --kubelet-preferred-address-types=InternalIP
  wait_for "the API server answering /readyz" 90 kube-apiserver kctl get --raw /readyz

  say "kube-controller-manager, kube-scheduler, containerd"
  start kube-controller-manager "$BIN/kube-controller-manager" \
    --kubeconfig="$NODE/controller-manager.kubeconfig" \
    --authentication-kubeconfig="$NODE/controller-manager.kubeconfig" \
    --authorization-kubeconfig="$NODE/controller-manager.kubeconfig" \
    --leader-elect=false --secure-port=0 --use-service-account-credentials=true \
    --root-ca-file="$NODE/pki/ca.crt" --service-account-private-key-file="$NODE/pki/sa.key" \
    --service-cluster-ip-range="$SERVICE_CIDR" \
    --cluster-signing-cert-file="$NODE/pki/ca.crt" --cluster-signing-key-file="$NODE/pki/ca.key"
  start kube-scheduler "$BIN/kube-scheduler" --kubeconfig="$NODE/scheduler.kubeconfig" \
    --authentication-kubeconfig="$NODE/scheduler.kubeconfig" \
    --authorization-kubeconfig="$NODE/scheduler.kubeconfig" --leader-elect=false --secure-port=0
  start containerd containerd --config "$NODE/containerd/config.toml"
  wait_for "containerd's socket" 30 containerd ctr -a "$NODE/containerd/containerd.sock" version

  say "the sandbox image (our own static pause binary)"
  python3 "$here/oci-image.py" --name docker.io/remora/pause:1 --out "$NODE/pause.tar" \
    --entrypoint /pause --user 65535:65535 --file "$BIN/pause=/pause"
  ctr -a "$NODE/containerd/containerd.sock" -n k8s.io images import "$NODE/pause.tar" >/dev/null

  say "kubelet"
  start kubelet "$BIN/kubelet" --config="$NODE/kubelet/config.yaml" \
    --kubeconfig="$NODE/kubelet.kubeconfig" --root-dir="$NODE/kubelet/root" \
    --cert-dir="$NODE/kubelet/pki" --hostname-override="$NODE_NAME" --node-ip="$NODE_IP"
  wait_for "node $NODE_NAME Ready" 120 kubelet \
    kctl wait --for=condition=Ready "node/$NODE_NAME" --timeout=2s

  say "kube-proxy, then the egress guard again, then CoreDNS"
  start kube-proxy "$BIN/kube-proxy" --config="$NODE/kube-proxy.yaml"
  wait_for "kube-proxy's Service rules" 60 kube-proxy \
    sh -c "iptables -t nat -S KUBE-SERVICES | grep -q $KUBERNETES_SERVICE_IP"
  check_guard
  start coredns "$BIN/coredns" -conf "$NODE/coredns/Corefile"
  wait_for "CoreDNS ready" 60 coredns curl -sf http://127.0.0.1:18181/ready

  echo $((SECONDS - t0)) >"$NODE/up-seconds"
  say "up in $((SECONDS - t0)) s; KUBECONFIG=$NODE/admin.kubeconfig"
}

down() {
  [[ -d $NODE ]] || { say "nothing to stop ($NODE does not exist)"; return 0; }
  BIN=$(cat "$NODE/bin" 2>/dev/null || true)
  say "stopping the node's processes"
  stop coredns
  stop kube-proxy
  stop kubelet
  stop kube-scheduler
  stop kube-controller-manager
  # Pods outlive the kubelet: kill their tasks through containerd while it still runs.
  if alive containerd; then
    local c=(ctr -a "$NODE/containerd/containerd.sock" -n k8s.io)
    local id
    for id in $("${c[@]}" tasks ls -q 2>/dev/null); do
      "${c[@]}" tasks kill -s SIGKILL "$id" >/dev/null 2>&1 || true
    done
    sleep 0.5
    for id in $("${c[@]}" tasks ls -q 2>/dev/null); do
      "${c[@]}" tasks delete -f "$id" >/dev/null 2>&1 || true
    done
    for id in $("${c[@]}" containers ls -q 2>/dev/null); do
      "${c[@]}" containers delete "$id" >/dev/null 2>&1 || true
    done
  fi
  stop containerd
  # Shims that lost containerd, and anything still running from the node's state.
  pkill -KILL -f "containerd-shim-runc-v2 .*-address $NODE/" 2>/dev/null || true
  stop kube-apiserver
  stop etcd

  say "restoring the host"
  if [[ -n $BIN && -x $BIN/kube-proxy ]]; then
    "$BIN/kube-proxy" --cleanup >/dev/null 2>&1 || true
  fi
  iptables -t mangle -D POSTROUTING -j "$GUARD" 2>/dev/null || true
  iptables -t mangle -F "$GUARD" 2>/dev/null || true
  iptables -t mangle -X "$GUARD" 2>/dev/null || true
  # What kube-proxy's cleanup leaves (the kubelet's canary chains, CNI's chains):
  # every KUBE-* and CNI-* chain and every rule that names one, nothing else.
  local save table
  for save in iptables-save ip6tables-save; do
    for table in filter nat mangle; do
      if "$save" -t "$table" 2>/dev/null | grep -qE -- '^(:|-A )(KUBE|CNI)-| -j (KUBE|CNI)-'; then
        "$save" -t "$table" | grep -vE -- '^(:|-A )(KUBE|CNI)-| -j (KUBE|CNI)-' | "${save%-save}-restore" -T "$table" ||
          say "could not remove the KUBE-/CNI- chains from $save -t $table"
      fi
    done
  done
  # Mounts under the state folder (pod volumes, sandboxes' network namespaces, overlays).
  local m
  for m in $(findmnt -rn -o TARGET | grep -F "$NODE/" | sort -r || true); do
    umount -l "$m" 2>/dev/null || true
  done
  # cgroups the kubelet made (cgroup v1: one tree per controller; v2: one tree).
  local cg
  for cg in /sys/fs/cgroup/*/kubepods /sys/fs/cgroup/kubepods /sys/fs/cgroup/*/kubepods.slice; do
    if [[ -d $cg ]]; then find "$cg" -depth -type d -exec rmdir {} + 2>/dev/null || true; fi
  done
  if [[ -f $NODE/host-before ]]; then
    local key value
    while read -r key value; do
      case $key in
        sysctl:*) sysctl -q -w "${key#sysctl:}=$value" || true ;;
        path:*) rm -rf "${key#path:}" ;;
      esac
    done <"$NODE/host-before"
  fi
  local v
  for v in $(ip -o link show master "$BRIDGE" 2>/dev/null | awk -F': ' '{print $2}' | sed 's/@.*//' || true); do
    ip link del "$v" 2>/dev/null || true
  done
  if ip link show "$BRIDGE" >/dev/null 2>&1; then ip link del "$BRIDGE"; fi
  rm -rf "$NODE"
  say "down; host restored"
}

case ${1:-} in
  up)
    on_failure() {
      local status=$?
      if [[ $status != 0 ]]; then say "up failed; restoring the host"; down; fi
      exit "$status"
    }
    trap on_failure EXIT
    up
    trap - EXIT ;;
  down) down ;;
  guard)
    out=$(guard_counters)
    echo "$out"
    [[ $out == "dropped 0" ]] ;;
  *) echo "usage: $0 up|down|guard" >&2; exit 2 ;;
esac
