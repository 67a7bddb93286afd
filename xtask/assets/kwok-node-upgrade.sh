#!/bin/sh
# A stand-in for a config-management run (Chef, Ansible, ...) on a kwok test node, run by
# rollgate over SSH. It "stops the kubelet" (the node turns NotReady), "installs" the target
# kubelet (the node reports $ROLLGATE_TARGET_KUBELET_VERSION) and "starts" it again (Ready).
#   FAKE_UPGRADE_SECONDS   how long the node stays down (default 2)
#   FAKE_UPGRADE_FAIL      exit 1 when set to this node's name (to try a failing node)
#   FAKE_REBOOT=async      like `apt-get upgrade && systemctl reboot`: the node stays Ready while
#                          the packages "install", the script returns at once after scheduling
#                          the reboot, and a second later the node turns NotReady, comes back
#                          with a new boot ID (status.nodeInfo.bootID) and the target kubelet,
#                          and is Ready again after FAKE_REBOOT_SECONDS (default 3)
set -eu
here=$(cd "$(dirname "$0")" && pwd)
kubectl() { "$here/kubectl" --kubeconfig "${KUBECONFIG:-$here/../kubeconfig}" "$@"; }
node=${ROLLGATE_NODE:?ROLLGATE_NODE is not set: run me through rollgate}
status_patch() {
  kubectl patch node "$node" --subresource=status --type=merge -p "{\"status\":{\"nodeInfo\":$1}}" >/dev/null
}
if [ "${FAKE_REBOOT:-}" = async ]; then
  echo "[$node] installing packages"
  sleep "${FAKE_UPGRADE_SECONDS:-2}"
  echo "[$node] packages installed; rebooting"
  (
    sleep 1
    kubectl label node "$node" rollgate.test/not-ready=true --overwrite
    i=0
    until [ "$(kubectl get node "$node" -o 'jsonpath={.status.conditions[?(@.type=="Ready")].status}')" = False ] || [ $i -ge 50 ]; do
      sleep 0.2; i=$((i + 1))
    done
    status_patch "{\"bootID\":\"$(cat /proc/sys/kernel/random/uuid)\"}"
    if [ -n "${ROLLGATE_TARGET_KUBELET_VERSION:-}" ]; then
      status_patch "{\"kubeletVersion\":\"$ROLLGATE_TARGET_KUBELET_VERSION\"}"
    fi
    sleep "${FAKE_REBOOT_SECONDS:-3}"
    kubectl label node "$node" rollgate.test/not-ready-
  ) >/dev/null 2>&1 </dev/null &
  exit 0
fi
echo "[$node] stopping kubelet"
kubectl label node "$node" rollgate.test/not-ready=true --overwrite >/dev/null
sleep "${FAKE_UPGRADE_SECONDS:-2}"
if [ "${FAKE_UPGRADE_FAIL:-}" = "$node" ]; then
  echo "[$node] package installation failed (FAKE_UPGRADE_FAIL)" >&2
  exit 1
fi
if [ -n "${ROLLGATE_TARGET_KUBELET_VERSION:-}" ]; then
  echo "[$node] installing kubelet $ROLLGATE_TARGET_KUBELET_VERSION"
  status_patch "{\"kubeletVersion\":\"$ROLLGATE_TARGET_KUBELET_VERSION\"}"
fi
echo "[$node] starting kubelet"
kubectl label node "$node" rollgate.test/not-ready- >/dev/null
echo "[$node] done"
