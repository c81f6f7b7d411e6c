#!/usr/bin/env bash
# Regenerates proto/tests/vectors/ with real Salt: for each version, a private master in a
# temp dir, then scripts/gen-vectors.py in that version's venv.
#   SALT_VERSIONS="3006.30 3007.17 3008.5" scripts/gen-vectors.sh
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(dirname "$here")
CACHE=${VIRTSEED_CACHE:-$HOME/.cache/virtseed}
versions=${SALT_VERSIONS:-3006.30 3007.17 3008.5}
SALT_VERSIONS="$versions" "$here/setup.sh" --salt-only
for v in $versions; do
    d=$(mktemp -d /tmp/virtseed-vec.XXXXXX)
    trap 'SALT_VERSION='"$v"' "$here/dev-master.sh" stop '"$d"' >/dev/null; rm -rf '"$d" EXIT
    SALT_VERSION=$v "$here/dev-master.sh" start "$d"
    "$CACHE/salt-$v/bin/python" "$here/gen-vectors.py" "$d" "$root/proto/tests/vectors"
    SALT_VERSION=$v "$here/dev-master.sh" stop "$d"
    rm -rf "$d"
    trap - EXIT
done
