#!/bin/sh
# A stand-in for a config-management run (Chef, Ansible, ...) on a kwok test node, run by
# rollgate over SSH. It "stops the kubelet" (the node turns NotReady), "installs" the target
# kubelet (the node reports $ROLLGATE_TARGET_KUBELET_VERSION) and "starts" it again (Ready).
#   FAKE_UPGRADE_SECONDS   how long the node stays down (default 2)
#   FAKE_UPGRADE_FAIL      exit 1 when set to this node's name (to try a failing node)
set -eu
here=$(cd "$(dirname "$0")" && pwd)
kubectl() { "$here/kubectl" --kubeconfig "${KUBECONFIG:-$here/../kubeconfig}" "$@"; }
node=${ROLLGATE_NODE:?ROLLGATE_NODE is not set: run me through rollgate}
echo "[$node] stopping kubelet"
kubectl label node "$node" rollgate.test/not-ready=true --overwrite >/dev/null
sleep "${FAKE_UPGRADE_SECONDS:-2}"
if [ "${FAKE_UPGRADE_FAIL:-}" = "$node" ]; then
  echo "[$node] package installation failed (FAKE_UPGRADE_FAIL)" >&2
  exit 1
fi
if [ -n "${ROLLGATE_TARGET_KUBELET_VERSION:-}" ]; then
  echo "[$node] installing kubelet $ROLLGATE_TARGET_KUBELET_VERSION"
  kubectl patch node "$node" --subresource=status --type=merge \
    -p "{\"status\":{\"nodeInfo\":{\"kubeletVersion\":\"$ROLLGATE_TARGET_KUBELET_VERSION\"}}}" >/dev/null
fi
echo "[$node] starting kubelet"
kubectl label node "$node" rollgate.test/not-ready- >/dev/null
echo "[$node] done"
