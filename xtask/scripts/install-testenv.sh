#!/usr/bin/env bash
# Builds and caches the test environment's binaries, keyed by version, outside the work tree.
# Idempotent: a component whose versioned directory holds a `.done` stamp is not rebuilt.
# Called by `cargo xtask testenv install`; safe to run by hand.
set -euo pipefail

K8S_VERSION="${K8S_VERSION:-v1.36.3}"
ETCD_VERSION="${ETCD_VERSION:-v3.6.16}"
KWOK_VERSION="${KWOK_VERSION:-v0.8.0}"
CACHE="${ROLLGATE_TESTENV_CACHE:-$HOME/.cache/rollgate-testenv}"
export CGO_ENABLED=0 GOFLAGS=-mod=mod GOTOOLCHAIN=local

log() { printf '[testenv install] %s\n' "$*" >&2; }

apt_ready=0
need_pkg() { # need_pkg COMMAND PACKAGE
  if ! command -v "$1" >/dev/null 2>&1 && [ ! -x "$1" ]; then
    if [ "$apt_ready" = 0 ]; then log "apt-get update"; apt-get update -qq >/dev/null; apt_ready=1; fi
    log "installing Debian package $2"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$2" >/dev/null
  fi
}

build_k8s() {
  local dir="$CACHE/k8s/$K8S_VERSION"
  [ -f "$dir/.done" ] && [ -x "$dir/bin/kubectl" ] && { log "kubernetes $K8S_VERSION cached"; return; }
  log "building kube-apiserver, kube-controller-manager, kube-scheduler, kubectl $K8S_VERSION (cold: 15-30 min)"
  local mod="$CACHE/src/k8s-$K8S_VERSION"
  rm -rf "$mod"; mkdir -p "$mod" "$dir/bin"
  cd "$mod"
  go mod init rollgate.local/k8sbuild >/dev/null 2>&1
  local gomod minor
  gomod=$(go mod download -json "k8s.io/kubernetes@$K8S_VERSION" | sed -n 's/.*"GoMod": "\(.*\)".*/\1/p')
  minor="v0.${K8S_VERSION#v1.}"
  # Map each staging module (=> ./staging/...) to its published v0.X.Y release.
  for m in $(grep -E '=> \./staging/' "$gomod" | awk '{print $1}' | sort -u); do
    go mod edit "-replace=$m=$m@$minor"
  done
  go mod edit "-require=k8s.io/kubernetes@$K8S_VERSION"
  cat > tools.go <<'GO'
//go:build tools
package tools

import (
	_ "k8s.io/kubernetes/cmd/kube-apiserver"
	_ "k8s.io/kubernetes/cmd/kube-controller-manager"
	_ "k8s.io/kubernetes/cmd/kube-scheduler"
	_ "k8s.io/kubernetes/cmd/kubectl"
)
GO
  go mod tidy -e >/dev/null 2>&1 || true
  local major=1 minor_n
  minor_n=$(echo "$K8S_VERSION" | cut -d. -f2)
  local ldflags="-s -w -X k8s.io/component-base/version.gitVersion=$K8S_VERSION -X k8s.io/component-base/version.gitMajor=$major -X k8s.io/component-base/version.gitMinor=$minor_n"
  for c in kube-apiserver kube-controller-manager kube-scheduler kubectl; do
    log "go build $c"
    go build -trimpath -ldflags "$ldflags" -o "$dir/bin/$c" "k8s.io/kubernetes/cmd/$c"
  done
  touch "$dir/.done"
}

build_etcd() {
  local dir="$CACHE/etcd/$ETCD_VERSION"
  [ -f "$dir/.done" ] && { log "etcd $ETCD_VERSION cached"; return; }
  log "building etcd $ETCD_VERSION"
  local mod="$CACHE/src/etcd-$ETCD_VERSION"
  rm -rf "$mod"; mkdir -p "$mod" "$dir/bin"
  cd "$mod"
  go mod init rollgate.local/etcdbuild >/dev/null 2>&1
  cat > tools.go <<'GO'
//go:build tools
package tools

import _ "go.etcd.io/etcd/server/v3"
GO
  go get "go.etcd.io/etcd/server/v3@$ETCD_VERSION" >/dev/null 2>&1
  go mod tidy -e >/dev/null 2>&1 || true
  go build -trimpath -ldflags "-s -w" -o "$dir/bin/etcd" go.etcd.io/etcd/server/v3
  touch "$dir/.done"
}

build_kwok() {
  local dir="$CACHE/kwok/$KWOK_VERSION"
  [ -f "$dir/.done" ] && { log "kwok $KWOK_VERSION cached"; return; }
  log "building kwok $KWOK_VERSION"
  mkdir -p "$dir/bin"
  GOBIN="$dir/bin" go install -trimpath -ldflags "-s -w" "sigs.k8s.io/kwok/cmd/kwok@$KWOK_VERSION"
  touch "$dir/.done"
}

mkdir -p "$CACHE"
need_pkg /usr/sbin/sshd openssh-server
need_pkg ssh-keygen openssh-client
need_pkg prometheus prometheus
need_pkg prometheus-pushgateway prometheus-pushgateway
need_pkg openssl openssl
need_pkg chromium chromium            # renders the run report in tests/report_cluster.rs
need_pkg sudo sudo                    # `[command] sudo = true` is tested with a non-root SSH user
need_pkg setsid util-linux            # the remote command runs detached (setsid) on the node
# The non-root SSH user of the sudo tests (the test sshds accept the test key for any user).
if ! id rollgate-sudo >/dev/null 2>&1; then
  log "adding user rollgate-sudo (passwordless sudo, for the test nodes' sshd)"
  useradd --create-home --shell /bin/sh rollgate-sudo
fi
# No password, but not locked ("!"): sshd without PAM refuses locked accounts.
if [ "$(getent shadow rollgate-sudo | cut -d: -f2)" != '*' ]; then usermod -p '*' rollgate-sudo; fi
if [ ! -f /etc/sudoers.d/rollgate-testenv ]; then
  echo 'rollgate-sudo ALL=(ALL) NOPASSWD: ALL' > /etc/sudoers.d/rollgate-testenv
  chmod 0440 /etc/sudoers.d/rollgate-testenv
fi
case "${1:-all}" in
  all) build_kwok; build_etcd; build_k8s ;;
  k8s) build_k8s ;; etcd) build_etcd ;; kwok) build_kwok ;; packages) ;;
  *) log "unknown component $1"; exit 2 ;;
esac
log "ready in $CACHE"
