#!/usr/bin/env bash
# The real multi-process flow on one machine: CA, identities, plan, aggregator and
# three collaborators as separate processes over mutual TLS on 127.0.0.1, MNIST.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
bastion="$repo/.venv/bin/bastion"
# Parsed MNIST is cached inside the repository (ignored by git), not in the home directory.
export BASTION_CACHE_DIR="${BASTION_CACHE_DIR:-$repo/.cache}"
workspace="$(mktemp -d -t bastion-demo-XXXXXX)/mnist"

"$bastion" workspace create "$workspace" --template torch_cnn_mnist --collaborators 3 --rounds 3
cd "$workspace"
"$bastion" pki init > /dev/null
"$bastion" pki issue aggregator --role aggregator --host 127.0.0.1 > /dev/null
for site in site-1 site-2 site-3; do
    "$bastion" pki issue "$site" --role collaborator > /dev/null
done
echo "identities issued: aggregator (127.0.0.1), site-1, site-2, site-3 (pki/issued.json)"
"$bastion" plan initialize
# The model owner measures the workspace and signs the manifest; the aggregator and every
# collaborator verify it before they import any of its code.
"$bastion" pki issue model-owner --role model-owner > /dev/null
"$bastion" workspace measure > /dev/null
"$bastion" workspace sign --key pki/model-owner.key --cert pki/model-owner.crt
"$bastion" simulate --plot logs/accuracy.png --require-improvement
echo "workspace: $workspace  (metrics: logs/metrics.jsonl, plot: logs/accuracy.png)"
