#!/usr/bin/env bash
# Prove that a plain clone is the product: make a fresh Debian 12 root with
# debootstrap, clone this repository's committed HEAD alone into root's home
# there (mode 700, nothing beside it), and run the README's two commands in
# it: `make run`, then `make test`. With a corpus folder, run `make test`
# once more with FLOWPROBE_CORPUS pointing at a read-only copy of it.
#
#   sudo tools/fresh-clone-check.sh [--corpus DIR] [--keep] [WORKDIR]
#
# WORKDIR defaults to /var/tmp/flowprobe-fresh (about 3 GB). Takes 20-40
# minutes; not part of `make test`. Prints each step's exit status and the
# pytest summary lines; full logs are in WORKDIR/*.log.
#
# The root gets the host's apt and pip settings (mirror, proxy, CA bundle,
# index), so it reaches the same package registries; nothing of the
# project's comes in but the clone. /proc, /sys, /dev and a private /run
# are mounted for the live tests (network namespaces, veth, AF_PACKET);
# everything is unmounted on exit, also on failure.
set -euo pipefail

corpus="" keep=0
while [ $# -gt 0 ]; do
    case "$1" in
        --corpus) corpus=$(cd "$2" && pwd); shift 2 ;;
        --keep) keep=1; shift ;;
        -h|--help) sed -n '2,19p' "$0"; exit 0 ;;
        *) break ;;
    esac
done
[ "$(id -u)" -eq 0 ] || { echo "fresh-clone-check: needs root" >&2; exit 2; }
repo=$(git -C "$(dirname "$0")/.." rev-parse --show-toplevel)
work=${1:-/var/tmp/flowprobe-fresh}
root=$work/root
release=bookworm

mirror=$(sed -n 's/^URIs:[[:space:]]*\(\S*\/debian\)\/\?$/\1/p; s/^deb[[:space:]]\+\(\[[^]]*\][[:space:]]\+\)\?\(\S*\/debian\)\/\?[[:space:]]\+'$release'[[:space:]].*/\2/p' \
    /etc/apt/sources.list /etc/apt/sources.list.d/* 2>/dev/null | head -n1) || true
mirror=${mirror:-http://deb.debian.org/debian}

# Everything mounted at or below the root, deepest first (the tests inside
# may leave mounts of their own, e.g. a nested debootstrap's /proc).
mounts_below() {
    awk -v r="$root" '$5 == r || index($5, r "/") == 1 { print $5 }' /proc/self/mountinfo | sort -r
}
unmount_all() {   # passes until none is left: bind mounts may be stacked
    local m pass
    for pass in 1 2 3 4 5; do
        [ -n "$(mounts_below)" ] || return 0
        for m in $(mounts_below); do umount -l "$m" 2>/dev/null || true; done
    done
}
remove_root() {   # never while anything is mounted below it
    unmount_all
    if [ -n "$(mounts_below)" ]; then
        echo "fresh-clone-check: still mounted under $root, not removing it:" $(mounts_below) >&2
        return 1
    fi
    rm -rf --one-file-system "$root"
}
cleanup() {
    if [ "$keep" -eq 1 ]; then unmount_all; else remove_root || true; fi
}
bind() {   # bind SRC DEST [ro]
    mkdir -p "$2"
    mount --rbind "$1" "$2"; mount --make-rslave "$2"
    [ "${3:-}" != ro ] || mount -o remount,bind,ro "$2"
}

in_root() {   # in_root LOG COMMAND...: run in the fresh root as a new root login would
    local log=$1; shift
    local start=$SECONDS rc=0
    chroot "$root" /usr/bin/env -i HOME=/root LANG=C.UTF-8 TERM=dumb \
        PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
        PIP_DEFAULT_TIMEOUT=180 ${PIP_FIND_LINKS:+PIP_FIND_LINKS=$PIP_FIND_LINKS} \
        "$@" > "$work/$log" 2>&1 < /dev/null || rc=$?
    echo "   exit $rc after $((SECONDS - start)) s (log: $work/$log)"
    grep -E '^(=+ )?[0-9]+ (passed|failed)|^corpus:|passed|failed|error' "$work/$log" | tail -n 4 | sed 's/^/   /'
    return $rc
}

main() {
mkdir -p "$work"
exec 9> "$work/.lock"
flock -n 9 || { echo "fresh-clone-check: another run holds $work" >&2; exit 2; }
trap cleanup EXIT
remove_root
echo "== debootstrap $release from $mirror"
debootstrap --variant=minbase --include=ca-certificates,make "$release" "$root" "$mirror" \
    > "$work/debootstrap.log" 2>&1 || { tail -20 "$work/debootstrap.log"; exit 1; }

# the host's registry settings, nothing else
cp -a /etc/apt/sources.list.d/. "$root/etc/apt/sources.list.d/" 2>/dev/null || true
rm -f "$root/etc/apt/sources.list"   # debootstrap's; the host's lists replace it
[ -f /etc/apt/sources.list ] && cp /etc/apt/sources.list "$root/etc/apt/sources.list"
cp -a /etc/apt/apt.conf.d/. "$root/etc/apt/apt.conf.d/" 2>/dev/null || true
[ -f /etc/pip.conf ] && cp /etc/pip.conf "$root/etc/pip.conf"
[ -d /etc/xdg/pip ] && mkdir -p "$root/etc/xdg" && cp -a /etc/xdg/pip "$root/etc/xdg/"
for d in /opt/pypi /opt/pypi-more /opt/wheels; do [ -d "$d" ] && bind "$d" "$root$d" ro; done
cp /etc/resolv.conf "$root/etc/resolv.conf" 2>/dev/null || true
# the host's trusted CAs (a registry proxy's own CA among them), one file
# each, so that update-ca-certificates in the root keeps them
cas=$root/usr/local/share/ca-certificates/host
mkdir -p "$cas"
awk -v dir="$cas" '/BEGIN CERTIFICATE/ { f = sprintf("%s/host-%03d.crt", dir, ++n) }
                   n { print > f } /END CERTIFICATE/ { close(f) }' /etc/ssl/certs/ca-certificates.crt
chroot "$root" update-ca-certificates > /dev/null 2>&1

echo "== clone $(git -C "$repo" rev-parse --short HEAD) into /root/flowprobe (home mode 700)"
chmod 700 "$root/root"
git clone -q --no-local "$repo" "$root/root/flowprobe"

# `ip netns exec` remounts / as a slave: / must be a mount point in the root
mount --bind "$root" "$root"
bind /proc "$root/proc"
bind /sys "$root/sys"
bind /dev "$root/dev"
mkdir -p "$root/run"; mount -t tmpfs -o mode=0755 tmpfs "$root/run"
mkdir -p "$root/run/netns"
if [ -n "$corpus" ]; then bind "$corpus" "$root/srv/corpus" ro; fi

status=0
echo "== make run"
in_root make-run.log sh -c 'cd /root/flowprobe && make run' || status=1
echo "== make test (plain clone)"
in_root make-test.log sh -c 'cd /root/flowprobe && make test' || status=1
if [ -n "$corpus" ]; then
    echo "== make test (FLOWPROBE_CORPUS=/srv/corpus)"
    in_root make-test-corpus.log sh -c 'cd /root/flowprobe && FLOWPROBE_CORPUS=/srv/corpus make test' || status=1
fi
exit $status
}

# the whole file is read before anything runs: editing it mid-run is safe
main "$@"
