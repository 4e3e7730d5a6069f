#!/usr/bin/env bash
# The main job, end to end with no server of your own: mount a copy of the sample asset
# tree through omni.client's file: provider, use it with ordinary tools, show a change made
# on the "server" side appear through the mount, and unmount.
set -euo pipefail
cd "$(dirname "$0")/.."
ASSETFS=.venv/bin/assetfs
work=$(mktemp -d /tmp/assetfs-demo.XXXXXX)
store="$work/store"      # plays the server: the file: provider's tree
mnt="$work/mnt"
cleanup() {
    if grep -q " $mnt fuse" /proc/mounts; then "$ASSETFS" umount "$mnt" || fusermount3 -u -z "$mnt"; fi
    rm -rf "$work"
}
trap cleanup EXIT
cp -r samples/assets "$store"
mkdir "$mnt"
step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

step "assetfs mount file://$store $mnt"
"$ASSETFS" mount "file://$store" "$mnt" -o cache_dir="$work/cache",write_back_delay=1

step "ls -lR through the mount"
ls -lR "$mnt"

step "read: cat Scenes/kitchen.usda (first lines) and sha256 of every file, mount vs store"
head -n 5 "$mnt/Scenes/kitchen.usda"
(cd "$mnt" && find . -type f -print0 | sort -z | xargs -0 sha256sum) > "$work/through-mount.sha"
(cd "$store" && find . -type f -print0 | sort -z | xargs -0 sha256sum) > "$work/direct.sha"
diff "$work/through-mount.sha" "$work/direct.sha" && echo "identical: $(wc -l < "$work/direct.sha") files"

step "metadata as extended attributes (getfattr -d -m user.assetfs)"
getfattr -d -m 'user.assetfs' "$mnt/Materials/oak.mdl" 2>/dev/null || true

step "write: a new file and a new folder through the mount, fsync'd (uploaded)"
mkdir -p "$mnt/Scenes/variants"
python3 - "$mnt/Scenes/variants/kitchen_night.usda" <<'PY'
import os, sys
with open(sys.argv[1], "w") as f:
    f.write('#usda 1.0\n(\n    subLayers = [@../kitchen.usda@]\n)\n')
    f.flush()
    os.fsync(f.fileno())
PY
echo "on the store:"; ls -l "$store/Scenes/variants"; cat "$store/Scenes/variants/kitchen_night.usda"

step "a change on the server side shows up through the mount"
echo "Textures by the demo, $(date -u +%FT%TZ)" > "$store/Textures/NOTES.txt"
for _ in $(seq 1 40); do [ -e "$mnt/Textures/NOTES.txt" ] && break; sleep 0.05; done
echo "through the mount:"; cat "$mnt/Textures/NOTES.txt"

step "assetfs status"
"$ASSETFS" status "$mnt"

step "assetfs umount"
"$ASSETFS" umount "$mnt"
grep -q " $mnt fuse" /proc/mounts && { echo "still mounted!"; exit 1; }
echo "unmounted; demo done."
