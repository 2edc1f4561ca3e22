#!/usr/bin/env bash
# Create the Secrets of examples/secrets.yaml in the cluster, with fresh random values; a Secret that exists is
# kept as it is (a new signing key would void every running job's token, a new sealing pair every stored
# credential). Values go to kubectl on its standard input, never on a command line or to disk. Needs kubectl and a
# Python that can import TuneFleet (for the sealing pair): run it from a checkout with TuneFleet installed.
#   S3_ACCESS_KEY_ID=... S3_SECRET_ACCESS_KEY=... [SMTP_PASSWORD=...] [NAMESPACE=tunefleet] deploy/k8s/create-secrets.sh
# With a managed PostgreSQL, give its URL as DATABASE_URL=postgresql://...; with a NATS of your own, NATS_URL=....
set -euo pipefail
cd "$(dirname "$0")/../.."
ns=${NAMESPACE:-tunefleet}
python=${PYTHON:-python3}
: "${S3_ACCESS_KEY_ID:?set S3_ACCESS_KEY_ID (object storage)}" "${S3_SECRET_ACCESS_KEY:?set S3_SECRET_ACCESS_KEY}"

exists() { kubectl -n "$ns" get secret "$1" >/dev/null 2>&1; }
create() {  # create NAME KEY VALUE [KEY VALUE ...]
  local name=$1 value; shift
  if exists "$name"; then echo "kept $name"; return; fi
  {
    printf 'apiVersion: v1\nkind: Secret\ntype: Opaque\nmetadata:\n  name: %s\n' "$name"
    printf '  labels: {app.kubernetes.io/part-of: tunefleet}\nstringData:\n'
    while [ $# -gt 0 ]; do
      value=${2//\\/\\\\}; value=${value//\"/\\\"}
      printf '  %s: "%s"\n' "$1" "$value"
      shift 2
    done
  } | kubectl -n "$ns" create -f - >/dev/null
  echo "created $name"
}
random() { "$python" -c "import secrets; print(secrets.token_$1(${2:-24}))"; }

kubectl get namespace "$ns" >/dev/null 2>&1 || kubectl create namespace "$ns"
create tunefleet-signing secret-key "$(random urlsafe 48)"
if exists tunefleet-sealing-public && exists tunefleet-sealing-private; then
  echo "kept tunefleet-sealing-public and tunefleet-sealing-private"
elif exists tunefleet-sealing-public || exists tunefleet-sealing-private; then
  echo "only one half of the sealing pair exists: delete it, or make the other half by hand" >&2
  exit 1
else
  read -r public private < <("$python" -c 'from shared.sealing import generate_keypair; print(*generate_keypair())')
  create tunefleet-sealing-public public-key "$public"
  create tunefleet-sealing-private private-key "$private"
fi
password=$(random hex)
create tunefleet-nats password "$password" url "${NATS_URL:-nats://tunefleet:$password@nats:4222}"
password=$(random hex)
create tunefleet-postgres password "$password" url "${DATABASE_URL:-postgresql://tunefleet:$password@postgres:5432/tunefleet}"
create tunefleet-s3 access-key-id "$S3_ACCESS_KEY_ID" secret-access-key "$S3_SECRET_ACCESS_KEY"
if [ -n "${SMTP_PASSWORD:-}" ]; then create tunefleet-smtp password "$SMTP_PASSWORD"; fi
