#!/usr/bin/env bash
# Builds the Debian package (cargo-deb) from binaries already built, and prints its
# path. PROFILE=dev (the default: the binaries of `cargo build --workspace --bins`, as
# the tests use) or PROFILE=release (after `cargo build --release --workspace --bins`,
# for hosts). With STATIC=1 (release only) the package holds the static musl agent
# (scripts/build-static.sh, which builds it when missing or stale: no shared library
# needed) and the glibc release ctl. It renders the man pages and completions from the
# binaries first.
# Installs cargo-deb when missing (`cargo install`, about two minutes once).
set -euo pipefail
cd "$(dirname "$0")/.."

profile="${PROFILE:-dev}"
case "$profile" in
    dev) dir=target/debug ;;
    release) dir=target/release ;;
    *) echo "package.sh: PROFILE must be dev or release, not '$profile'" >&2; exit 2 ;;
esac
static="${STATIC:-0}"
target=()
if [ "$static" = 1 ]; then
    [ "$profile" = release ] || { echo "package.sh: STATIC=1 needs PROFILE=release" >&2; exit 2; }
    agent=$(scripts/build-static.sh)
    [ -x target/release/ctl ] || {
        echo "package.sh: target/release/ctl is missing; build it first (cargo build --release --bins)" >&2
        exit 2
    }
    # cargo-deb --target reads the assets listed under target/release/ from the target's
    # own directory: ctl (the glibc build) and the generated files go there beside the
    # static agent.
    dir=$(dirname "$agent")
    cp -p target/release/ctl "$dir/ctl"
    target=(--target x86_64-unknown-linux-musl)
fi
for b in nodeagent ctl; do
    [ -x "$dir/$b" ] || {
        echo "package.sh: $dir/$b is missing; build it first (cargo build --workspace --bins)" >&2
        exit 2
    }
done
if ! command -v cargo-deb >/dev/null 2>&1; then
    echo "installing cargo-deb ..." >&2
    # xz through the system's xz: fewer crates to build.
    cargo install cargo-deb --locked --no-default-features --quiet
fi

# What the package installs besides the binaries, made from the binaries themselves.
gen="$dir/package"
mkdir -p "$gen"
"$dir/nodeagent" --manpage | gzip -9n > "$gen/nodeagent.1.gz"
"$dir/ctl" manpage | gzip -9n > "$gen/ctl.1.gz"
"$dir/ctl" completions bash > "$gen/ctl.bash"
"$dir/ctl" completions zsh > "$gen/_ctl"
"$dir/ctl" completions fish > "$gen/ctl.fish"

out="${OUT_DIR:-target/debian}"
mkdir -p "$out"
# --fast: quick compression, the package is rebuilt at every run.
extra=()
[ "$profile" = dev ] && extra+=(--fast)
log="$out/cargo-deb.log"
if ! cargo deb -p nodeagent --no-build --profile "$profile" ${target[@]+"${target[@]}"} \
    --output "$out" ${extra[@]+"${extra[@]}"} \
    >"$log" 2>&1; then
    cat "$log" >&2
    echo "package.sh: cargo deb failed" >&2
    exit 1
fi
deb=$(tail -n 1 "$log")
[ -f "$deb" ] || { cat "$log" >&2; echo "package.sh: no package was built" >&2; exit 1; }
echo "$deb"
