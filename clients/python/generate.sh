#!/usr/bin/env bash
# Generates the Python stubs of qistatus.v1 from proto/ into clients/python/generated/.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$here/../.."
python="${PYTHON:-python3}"
mkdir -p "$here/generated"
"$python" -m grpc_tools.protoc \
  -I "$root/proto" \
  --python_out="$here/generated" \
  --grpc_python_out="$here/generated" \
  "$root/proto/qistatus/v1/qistatus.proto" \
  "$root/proto/qistatus/v1/maintenance.proto"
echo "stubs written to $here/generated/qistatus/v1/"
