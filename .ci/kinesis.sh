#!/usr/bin/env bash
# The Kinesis emulator for the forwarder and firehose-local tests: kinesis-local (kinesis-mock)
# from npm, installed into .ci/cache/kinesis (gitignored). Idempotent.
#
#   bash .ci/kinesis.sh install   # npm install once; later runs do nothing
#   bash .ci/kinesis.sh dir       # print the package directory (where `node main.js` runs)
set -euo pipefail
cd "$(dirname "$0")/.."
VERSION=0.6.2
PREFIX="$(pwd)/.ci/cache/kinesis"
PKG="$PREFIX/node_modules/kinesis-local"

case "${1:-}" in
  install)
    if [ -f "$PKG/main.js" ] && [ "$(node -p "require('$PKG/package.json').version")" = "$VERSION" ]; then
      echo "kinesis-local $VERSION already installed in .ci/cache/kinesis"
      exit 0
    fi
    command -v npm >/dev/null || { echo "npm is needed for the Kinesis emulator (apt-get install nodejs npm)" >&2; exit 1; }
    mkdir -p "$PREFIX"
    npm install --prefix "$PREFIX" --no-audit --no-fund --loglevel=error "kinesis-local@$VERSION"
    ;;
  dir)
    echo "$PKG"
    ;;
  *)
    echo "usage: $0 install|dir" >&2
    exit 2
    ;;
esac
