#!/usr/bin/env bash
# Builds binaries the way the images ship them: `cargo build --profile dist` (fat LTO, one codegen
# unit), and the weft-proxy package's binaries also with profile-guided optimization (PGO) from
# the profile in proxy/pgo/ (docs/benchmarks.md, "Profile-guided optimization of the proxy").
# This is the one place that decides how a shipped binary is built: scripts/build_images.py and
# the benchmarks call it.
#
#   scripts/build-dist.sh BIN...         # e.g. weft-proxy weft-operator
#   scripts/build-dist.sh example:NAME   # an example of weft-proxy's package built as the proxy is
#                                        # (benchmark tooling: proxy/examples/hyper_floor.rs)
#   PGO=off scripts/build-dist.sh BIN... # the proxy without the profile (to compare)
#   scripts/build-dist.sh --profile-key  # what a profile is only valid for (below)
#   scripts/build-dist.sh --proxy-code   # the proxy's source folders, whose functions it counts
#
# Binaries land in ${CARGO_TARGET_DIR:-target}/dist/, as with `cargo build --profile dist`. The
# proxy's binaries are built in a cargo invocation of their own, with --target set to the host
# (so that the profile flags reach the proxy's code and not build scripts or proc macros), and
# copied there. PGO=generate:DIR builds them instrumented instead, writing raw profiles to DIR
# (proxy/pgo/train.sh). Needs only cargo and gzip: the profile is committed, already merged.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
TARGET=${CARGO_TARGET_DIR:-$ROOT/target}
case $TARGET in /*) ;; *) TARGET=$ROOT/$TARGET ;; esac
PGO=${PGO:-use}
PROFILE_GZ=$ROOT/proxy/pgo/weft-proxy.profdata.gz
PROFILE_META=$ROOT/proxy/pgo/PROFILE
PROXY_BINS=" weft-proxy weft-proxy-init "
# The source whose functions a profile counts; changes to it make a profile partly stale.
PROXY_CODE="proxy/src common/src proxy-api/src"

die() {
    echo "build-dist: $*" >&2
    exit 1
}
[ $# -gt 0 ] || die "usage: scripts/build-dist.sh BIN... (e.g. weft-proxy weft-operator)"
host=$(rustc -vV | sed -n 's/^host: //p')
llvm=$(rustc -vV | sed -n 's/^LLVM version: //p')

# A profile names functions by their mangled symbols, whose hashes come from cargo's metadata
# for each crate: the compiler's version and the crate's name, version, features and
# dependencies. So a profile is valid for one rustc and one resolved dependency tree of
# weft-proxy (registry crates and the workspace crates alike; their source code may change: a
# changed function only loses its own counts). proxy/pgo/train.sh records this key in
# proxy/pgo/PROFILE, and proxy/tests/pgo_profile.rs fails when the workspace no longer has it.
profile_key() {
    echo "rustc: $(rustc -V)"
    # Paths of workspace crates are cut: they differ between checkouts, and cargo's metadata
    # uses paths relative to the workspace.
    echo "dependencies: $(cargo tree --locked --offline -p weft-proxy --target "$host" -e normal,build \
        --prefix none --format '{p} {f}' | sed 's/ ([^)]*)//; s/ (\*)//' | LC_ALL=C sort -u |
        sha256sum | cut -c1-32)"
}
case $1 in
--profile-key)
    profile_key
    exit 0
    ;;
--proxy-code)
    echo "$PROXY_CODE"
    exit 0
    ;;
esac

plain=() proxy=() examples=()
for b in "$@"; do
    case $b in
    example:*) examples+=("${b#example:}") ;;
    *)
        case $PROXY_BINS in
        *" $b "*) proxy+=(--bin "$b") ;;
        *) plain+=(--bin "$b") ;;
        esac
        ;;
    esac
done

if [ ${#plain[@]} -gt 0 ]; then
    echo "build-dist: cargo build --profile dist --locked ${plain[*]}" >&2
    cargo build --profile dist --locked "${plain[@]}"
fi
[ ${#proxy[@]} -gt 0 ] || [ ${#examples[@]} -gt 0 ] || exit 0

case $PGO in
off) flags="" ;;
generate:/*) flags="-Cprofile-generate=${PGO#generate:}" ;;
use)
    [ -f "$PROFILE_GZ" ] && [ -f "$PROFILE_META" ] || die "no profile in proxy/pgo (proxy/pgo/train.sh makes one; PGO=off builds without)"
    # The profile's format is LLVM's: it is read by the LLVM that wrote it (or a newer one).
    made_by=$(sed -n 's/^llvm: //p' "$PROFILE_META")
    [ "${made_by%%.*}" = "${llvm%%.*}" ] ||
        die "proxy/pgo's profile was made with LLVM $made_by, this rustc has LLVM $llvm: run proxy/pgo/train.sh (or PGO=off)"
    # Named by its content: a new profile changes RUSTFLAGS, so cargo rebuilds with it.
    sum=$(sha256sum "$PROFILE_GZ" | cut -c1-16)
    data=$TARGET/pgo/weft-proxy-$sum.profdata
    if [ ! -f "$data" ]; then
        mkdir -p "$TARGET/pgo"
        gzip -dc "$PROFILE_GZ" >"$data.tmp"
        mv "$data.tmp" "$data"
    fi
    flags="-Cprofile-use=$data"
    # A stale profile still builds a correct proxy, only a slower one: say so, loudly.
    if [ "$(profile_key)" != "$(grep -E '^(rustc|dependencies): ' "$PROFILE_META")" ]; then
        echo "build-dist: WARNING: proxy/pgo's profile was made for another rustc or dependency tree of weft-proxy; most of it will not apply (run proxy/pgo/train.sh)" >&2
    fi
    # Changed functions lose their counts and are optimized as without PGO; say how many files.
    trained=$(sed -n 's/^commit: \([0-9a-f]*\).*/\1/p' "$PROFILE_META")
    if git rev-parse -q --verify "${trained:-none}^{commit}" >/dev/null 2>&1; then
        # shellcheck disable=SC2086 # a list of paths
        changed=$(git diff --name-only "$trained" -- $PROXY_CODE | wc -l)
        [ "$changed" = 0 ] ||
            echo "build-dist: note: $changed source files of the proxy changed since its profile was trained at $trained (proxy/pgo/train.sh refreshes it)" >&2
    fi
    ;;
*) die "PGO must be use, off or generate:/ABSOLUTE/DIR, got '$PGO'" ;;
esac

# The proxy links glibc statically (static-pie, still randomized): a dynamically linked glibc maps
# all of libc.so (2 MB), and its pages count in every proxy's RSS; linked in, only what the proxy
# calls is there (docs/benchmarks.md, "The proxy linked statically"). glibc >= 2.34 resolves names
# from /etc/hosts and DNS without loading NSS modules, which is all the proxy asks of it.
flags="-Ctarget-feature=+crt-static${flags:+ $flags}"
# Its relative relocations packed (DT_RELR, binutils >= 2.38 and glibc >= 2.36): a static-pie
# applies ~18,000 of them at start, and as 24-byte RELA entries (437 KiB) each proxy reads them
# all, and keeps those pages resident; packed, they take a few KiB (docs/benchmarks.md, "The
# relocations packed").
# (`ld --help` read whole before looking: under pipefail, `| grep -q` stops reading at the match
# and ld, killed by SIGPIPE while still writing, failed the test on a busy machine.)
case $(ld --help 2>/dev/null || true) in
*pack-relative-relocs*) flags="$flags -Clink-arg=-Wl,-z,pack-relative-relocs" ;;
*) echo "build-dist: note: this linker cannot pack relocations (binutils < 2.38); the proxy keeps ~0.4 MiB more resident" >&2 ;;
esac
built=()
if [ ${#proxy[@]} -gt 0 ]; then
    echo "build-dist: RUSTFLAGS='$flags' cargo build --profile dist --locked --target $host ${proxy[*]}" >&2
    RUSTFLAGS="${RUSTFLAGS:+$RUSTFLAGS }$flags" cargo build --profile dist --locked --target "$host" "${proxy[@]}"
    for ((i = 1; i < ${#proxy[@]}; i += 2)); do built+=("${proxy[i]}"); done
fi
# Examples in a cargo invocation of their own: they may use dev-dependencies, whose features
# would otherwise be unified into the shipped binaries (tokio's test-util, for one).
for e in "${examples[@]}"; do
    echo "build-dist: RUSTFLAGS='$flags' cargo build --profile dist --locked --target $host -p weft-proxy --example $e" >&2
    RUSTFLAGS="${RUSTFLAGS:+$RUSTFLAGS }$flags" cargo build --profile dist --locked --target "$host" -p weft-proxy --example "$e"
    built+=("examples/$e")
done
mkdir -p "$TARGET/dist/examples"
for b in "${built[@]}"; do
    # Removed first: cargo's own output there may be a hard link into its deps/ folder.
    rm -f "$TARGET/dist/$b"
    cp "$TARGET/$host/dist/$b" "$TARGET/dist/$b"
done
