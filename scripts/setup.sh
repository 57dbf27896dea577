#!/usr/bin/env bash
# Installs what the project needs beyond the Rust toolchain: nats-server (Debian's
# package), tmux (the `ctl top` test drives a real terminal), openssl (the TLS test
# makes its certificates), iproute2 (the network-cut test makes a namespace), python3
# (the socket tests and examples/socket_http.py serve on inherited sockets), and
# chromium with chromium-driver (the `ctl web` tests drive headless Chromium through
# WebDriver). Sourced by demo.sh and test.sh; safe to run again.
set -euo pipefail

need=()
command -v nats-server >/dev/null 2>&1 || [ -x /usr/sbin/nats-server ] || need+=(nats-server)
command -v tmux >/dev/null 2>&1 || need+=(tmux)
command -v openssl >/dev/null 2>&1 || need+=(openssl)
command -v ip >/dev/null 2>&1 || [ -x /usr/sbin/ip ] || need+=(iproute2)
[ -x /usr/bin/python3 ] || need+=(python3)
command -v chromium >/dev/null 2>&1 || need+=(chromium)
command -v chromedriver >/dev/null 2>&1 || need+=(chromium-driver)
if [ ${#need[@]} -gt 0 ]; then
    echo "installing ${need[*]} ..." >&2
    SUDO=""
    [ "$(id -u)" -eq 0 ] || SUDO="sudo"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need[@]}" >/dev/null
fi
# Debian installs nats-server in /usr/sbin, which is not always on PATH.
case ":$PATH:" in *:/usr/sbin:*) ;; *) export PATH="$PATH:/usr/sbin" ;; esac
