#!/usr/bin/env bash
# Builds libfieldlink (crates/fieldlink-capi) and installs it for C and C++ programs:
#   PREFIX/include/fieldlink.h, PREFIX/lib/libfieldlink.{so,a},
#   PREFIX/lib/pkgconfig/fieldlink.pc  (pkg-config --cflags --libs fieldlink)
# Usage: scripts/install-capi.sh [--prefix DIR (default /usr/local)] [--debug]
set -euo pipefail
cd "$(dirname "$0")/.."

prefix=/usr/local
profile=release
while [ $# -gt 0 ]; do
  case "$1" in
    --prefix) prefix=$2; shift 2 ;;
    --debug) profile=debug; shift ;;
    -h|--help) sed -n '2,5p' "$0"; exit 0 ;;
    *) echo "install-capi.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
done

flags=(); [ "$profile" = release ] && flags=(--release)
echo "== building libfieldlink ($profile)"
cargo build -p fieldlink-capi "${flags[@]}"
target=$(cargo metadata --format-version 1 --no-deps \
  | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')
version=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -n 1)

echo "== installing into $prefix"
install -d "$prefix/include" "$prefix/lib/pkgconfig"
install -m 644 crates/fieldlink-capi/include/fieldlink.h "$prefix/include/"
install -m 755 "$target/$profile/libfieldlink.so" "$prefix/lib/"
install -m 644 "$target/$profile/libfieldlink.a" "$prefix/lib/"
# Libs.private: what the static library needs besides itself (rustc's
# --print native-static-libs for this crate; libasound for the ALSA audio devices).
cat > "$prefix/lib/pkgconfig/fieldlink.pc" <<PC
prefix=$prefix
includedir=\${prefix}/include
libdir=\${prefix}/lib

Name: fieldlink
Description: fieldlink field and remote devices (C API)
Version: $version
Cflags: -I\${includedir}
Libs: -L\${libdir} -lfieldlink
Libs.private: -lstdc++ -lasound -lgcc_s -lutil -lrt -lpthread -lm -ldl -lc
PC
echo "installed: $prefix/include/fieldlink.h, $prefix/lib/libfieldlink.{so,a}, $prefix/lib/pkgconfig/fieldlink.pc"
