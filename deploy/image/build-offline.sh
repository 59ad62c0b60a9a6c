#!/usr/bin/env bash
# Builds the runtime image of ../../Dockerfile without a registry or a Docker engine: a scratch
# image holding the release binary, exactly the shared libraries it links (found with ldd), the
# system's CA certificates and a non-root user, committed with buildah. Then checks it: the
# image, run as a container with the demo configuration mounted, answers --version and `check`,
# and serves the demo (the demo's ports 8080, 8443, 9000 and 9901 on loopback must be free).
#
#   deploy/image/build-offline.sh [IMAGE]        (default claimgate:dev; needs root or a user
#                                                 namespace, buildah, a release build)
# Output: the image id, its size, and the two answers. Export: buildah push IMAGE oci-archive:x.tar
set -euo pipefail
cd "$(dirname "$0")/../.."
image="${1:-claimgate:dev}"
binary=target/release/claimgate
command -v buildah >/dev/null || { echo "buildah is not installed (apt-get install buildah)" >&2; exit 2; }
[ -x "$binary" ] || cargo build --release --locked --bin claimgate

# vfs: works where overlay mounts are not allowed (containers, CI sandboxes).
export STORAGE_DRIVER="${STORAGE_DRIVER:-vfs}"
ctr=$(buildah from scratch)
trap 'buildah rm "$ctr" >/dev/null 2>&1 || true' EXIT
root=$(buildah mount "$ctr")

# Without the debug line tables (most of the release binary's size); the symbols stay, so a
# backtrace still names its functions.
install -D -m 0755 "$binary" "$root/usr/local/bin/claimgate"
strip --strip-debug "$root/usr/local/bin/claimgate"
# Every shared object the binary loads, at the path the loader looks for it.
for lib in $(ldd "$binary" | grep -o '/[^ ]*'); do
  install -D -m 0644 "$(readlink -f "$lib")" "$root$lib"
done
chmod 0755 "$root"/lib64/ld-linux-*.so.* 2>/dev/null || true
install -D -m 0644 /etc/ssl/certs/ca-certificates.crt "$root/etc/ssl/certs/ca-certificates.crt"
mkdir -p "$root/etc" "$root/tmp" "$root/etc/claimgate"
chmod 1777 "$root/tmp"
printf 'root:x:0:0:root:/root:/sbin/nologin\nnonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin\n' > "$root/etc/passwd"
printf 'root:x:0:\nnonroot:x:65532:\n' > "$root/etc/group"

buildah umount "$ctr" >/dev/null
buildah config \
  --user 65532:65532 \
  --port 8080 --port 9901 \
  --entrypoint '["/usr/local/bin/claimgate"]' \
  --cmd 'run --config /etc/claimgate/config/gateway.toml --log-format json' \
  --label org.opencontainers.image.title=claimgate \
  "$ctr"
id=$(buildah commit --quiet --rm "$ctr" "$image")
trap - EXIT

# The committed image, run as a container (chroot isolation: no daemon, no namespaces needed),
# with its own user and files and the demo configuration mounted read-only, as a pod would.
check=$(buildah from "$image")
trap 'buildah rm "$check" >/dev/null 2>&1 || true' EXIT
in_image() { buildah run --isolation chroot -v "$PWD:/etc/claimgate/demo:ro" "$check" -- "$@"; }
user=$(buildah inspect --type container --format '{{.OCIv1.Config.User}}' "$check")
version=$(in_image /usr/local/bin/claimgate --version)
checked=$(in_image /usr/local/bin/claimgate check --config /etc/claimgate/demo/gateway.toml 2>&1)

# And it serves: the demo gateway with its echo upstream, from the image, answers /health.
in_image /usr/local/bin/claimgate run --config /etc/claimgate/demo/gateway.toml \
  --echo-upstream 127.0.0.1:9000 --echo-data /etc/claimgate/demo/dev/demo-data \
  > /dev/null 2>&1 &
served=none
for _ in $(seq 1 100); do
  served=$(curl -s -o /dev/null -w '%{http_code}' http://127.0.0.1:8080/health || true)
  [ "$served" = 200 ] && break
  sleep 0.1
done
pkill -TERM -f 'claimgate run --config /etc/claimgate/demo/gateway.toml' || true
wait || true

echo "image:   $image ($id), user $user"
buildah images --format 'size:    {{.Size}}' "$image"
echo "version: $version"
echo "check:   $checked"
echo "serves:  GET /health -> $served"
[ "$served" = 200 ]
