#!/bin/sh
# Regenerates kubernetes.desc, the FileDescriptorSet of the Kubernetes API types the server
# decodes from `application/vnd.kubernetes.protobuf` bodies (see src/protobuf.rs).
#
# The .proto files are Kubernetes' own (k8s.io/api, apimachinery, apiextensions-apiserver),
# as shipped for v1.33 in the k8s-rs-pb crate (packages renamed `api.core.v1`, ...; the wire
# format does not carry package names). Fetch that crate with `cargo fetch`/`cargo info
# k8s-rs-pb` and point PROTOS at its src/v1_33 directory. Needs protoc.
set -eu
PROTOS=${PROTOS:-$(ls -d "${CARGO_HOME:-$HOME/.cargo}"/registry/src/*/k8s-rs-pb-0.5.0/src/v1_33 | head -n1)}
OUT=$(cd "$(dirname "$0")" && pwd)/kubernetes.desc
cd "$PROTOS"
protoc -I . --include_imports --descriptor_set_out="$OUT" \
  api/core/v1/generated.proto api/apps/v1/generated.proto api/batch/v1/generated.proto \
  api/coordination/v1/generated.proto api/discovery/v1/generated.proto \
  api/networking/v1/generated.proto api/policy/v1/generated.proto \
  api/autoscaling/v1/generated.proto \
  apiextensions_apiserver/pkg/apis/apiextensions/v1/generated.proto
