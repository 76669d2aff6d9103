#!/bin/sh
# Build flowprobe_<version>_<arch>.deb from packaging/ (plain dpkg-deb: the
# package is a staged tree, no debhelper run is needed).
#
#   packaging/build-deb.sh [OUTDIR]        (default OUTDIR: dist/)
#
# Environment: DEB_VERSION (default: flowprobe.__version__),
#              DEB_PYTHON (default /usr/bin/python3: the interpreter the
#              package depends on; the vendored C extensions match it).
#
# Layout: /usr/lib/flowprobe  flowprobe + vendored deps (pip --target),
#         /usr/bin/flowprobe  wrapper (python3 -I), /etc/flowprobe/*.yaml
#         (conffile), /lib/systemd/system/flowprobe.service, man page.
set -eu

ROOT=$(cd "$(dirname "$0")/.." && pwd)
PKG="$ROOT/packaging"
OUT=${1:-"$ROOT/dist"}
PY=${DEB_PYTHON:-/usr/bin/python3}
VERSION=${DEB_VERSION:-$(sed -n 's/^__version__ = "\(.*\)"/\1/p' "$ROOT/__init__.py")}
ARCH=$(dpkg --print-architecture)
LIBDIR=/usr/lib/flowprobe
DEB="$OUT/flowprobe_${VERSION}_${ARCH}.deb"

umask 022
WORK=$(mktemp -d /tmp/flowprobe-deb.XXXXXX)
trap 'rm -rf "$WORK"' EXIT
STAGE="$WORK/root"
LIB="$STAGE$LIBDIR"
DOC="$STAGE/usr/share/doc/flowprobe"
export SOURCE_DATE_EPOCH=${SOURCE_DATE_EPOCH:-$(dpkg-parsechangelog -l "$PKG/debian/changelog" -STimestamp)}
export PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_WARN_SCRIPT_LOCATION=1 PIP_ROOT_USER_ACTION=ignore

echo "build-deb: flowprobe $VERSION ($ARCH) with $($PY --version)"
# 1. the flowprobe wheel (compiles the cffi extensions), then it and its
#    dependencies into the private tree. Build from a copy: no build/ or
#    egg-info litter in the work tree, no stale in-place .so files.
mkdir -p "$WORK/src" "$WORK/wheels"
tar -C "$ROOT" --exclude=./build --exclude=./dist --exclude=./.git \
    --exclude='*.so' --exclude=__pycache__ --exclude=./tests --exclude=./bench \
    --exclude='*.egg-info' -cf - . | tar -C "$WORK/src" -xf -
"$PY" -m pip wheel -qq --no-deps -w "$WORK/wheels" "$WORK/src"
"$PY" -m pip install -qq --no-compile --target "$LIB" "$WORK"/wheels/flowprobe-*.whl
rm -rf "$LIB/bin"
# PyYAML's optional C accelerator embeds a static libyaml (lintian:
# embedded-library); flowprobe only uses the pure-Python SafeLoader/dumper.
rm -f "$LIB"/yaml/_yaml*.so
# vendored modules are not scripts: drop their "#!/usr/bin/env python" lines
find "$LIB" -name '*.py' -type f -exec sed -i '1{/^#!/d}' {} +
find "$LIB" -name __pycache__ -type d -prune -exec rm -rf {} +
find "$LIB" -name '*.so*' -type f -exec strip --strip-unneeded --remove-section=.comment --remove-section=.note {} +

# 2. command, config, unit, drop-in example
install -D -m 0755 "$PKG/flowprobe.wrapper" "$STAGE/usr/bin/flowprobe"
sed -i "s|@LIBDIR@|$LIBDIR|" "$STAGE/usr/bin/flowprobe"
install -D -m 0644 "$ROOT/config/flowprobe.yaml" "$STAGE/etc/flowprobe/flowprobe.yaml"
install -D -m 0644 "$PKG/debian/flowprobe.service" "$STAGE/lib/systemd/system/flowprobe.service"
install -D -m 0644 "$PKG/debian/afxdp.conf" "$STAGE/usr/share/flowprobe/afxdp.conf"

# 3. man page from --help (help2man), with every subcommand's help
mkdir -p "$WORK/bin"
sed "s|@LIBDIR@|$LIB|" "$PKG/flowprobe.wrapper" > "$WORK/bin/flowprobe"
chmod 0755 "$WORK/bin/flowprobe"
"$PY" "$PKG/man-include.py" "$WORK/bin/flowprobe" > "$WORK/man.h2m"
mkdir -p "$STAGE/usr/share/man/man1"
help2man -N --section 1 --name "passive flow-export probe (NetFlow, IPFIX)" \
    --include "$WORK/man.h2m" --output "$WORK/flowprobe.1" "$WORK/bin/flowprobe"
gzip -9n -c "$WORK/flowprobe.1" > "$STAGE/usr/share/man/man1/flowprobe.1.gz"

find "$LIB" -name __pycache__ -type d -prune -exec rm -rf {} +   # help2man's runs

# 4. docs: changelog, copyright (with the vendored packages' licenses)
mkdir -p "$DOC"
gzip -9n -c "$PKG/debian/changelog" > "$DOC/changelog.gz"
{ cat "$PKG/debian/copyright"
  "$PY" - "$LIB" <<'PYEOF'
import pathlib, sys
from email.parser import Parser
for d in sorted(pathlib.Path(sys.argv[1]).glob("*.dist-info")):
    m = Parser().parsestr((d / "METADATA").read_text(errors="replace"))
    if m["Name"] == "flowprobe":
        continue
    lic = m.get("License-Expression") or (m.get("License") or "").split("\n")[0].strip()
    cls = [c.split("::")[-1].strip() for c in m.get_all("Classifier") or [] if c.startswith("License ::")]
    files = sorted(p.name for p in d.rglob("*") if p.is_file() and
                   any(w in p.name.upper() for w in ("LICEN", "COPYING", "NOTICE")))
    print(f" {m['Name']} {m['Version']}: {lic or ', '.join(cls) or 'see its dist-info'}"
          + (f" ({', '.join(cls)})" if lic and cls else ""))
    print(f"   {m.get('Home-page') or ''} license files: {d.name}/ {' '.join(files)}".rstrip())
PYEOF
} > "$DOC/copyright"
chmod 0644 "$DOC/copyright" "$DOC/changelog.gz"

# 5. control files
mkdir -p "$STAGE/DEBIAN"
for f in postinst prerm postrm; do install -m 0755 "$PKG/debian/$f" "$STAGE/DEBIAN/$f"; done
install -m 0644 "$PKG/debian/conffiles" "$STAGE/DEBIAN/conffiles"
SIZE=$(du -sk --exclude=DEBIAN "$STAGE" | cut -f1)
sed -e "s/@VERSION@/$VERSION/" -e "s/@ARCH@/$ARCH/" -e "s/@SIZE@/$SIZE/" \
    "$PKG/debian/control" > "$STAGE/DEBIAN/control"
find "$STAGE" -type d -exec chmod 0755 {} +
find "$STAGE" -type f ! -path "$STAGE/DEBIAN/*" ! -path "$STAGE/usr/bin/*" -exec chmod 0644 {} +
find "$STAGE" -exec touch -h -d "@$SOURCE_DATE_EPOCH" {} +
(cd "$STAGE" && find . -type f ! -path './DEBIAN/*' ! -path './etc/*' -printf '%P\0' | sort -z \
    | xargs -0 md5sum > DEBIAN/md5sums)
chmod 0644 "$STAGE/DEBIAN/md5sums"

mkdir -p "$OUT"
dpkg-deb --root-owner-group -Zxz --build "$STAGE" "$DEB" >/dev/null
echo "build-deb: $DEB"
