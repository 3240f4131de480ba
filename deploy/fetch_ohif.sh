#!/usr/bin/env bash
# Fetch the built OHIF viewer (@ohif/app, MIT) from the npm registry into var/ohif/ (ignored, never
# committed): the tarball is checked against the registry's sha512 integrity pinned here before
# anything is unpacked, so a changed or truncated download never reaches the served folder; the
# build is then rebased from the site root to /viewer/, where radqueue serves it.
#   deploy/fetch_ohif.sh            fetch unless var/ohif/ already holds this version
#   OHIF_DIR=/path deploy/fetch_ohif.sh
# Exit status 0 on success, non-zero on any failure (the registry unreachable, a hash mismatch)
# with var/ohif/ as it was.
set -euo pipefail
cd "$(dirname "$0")/.."

VERSION=3.13.2
TARBALL_URL="${OHIF_TARBALL_URL:-https://registry.npmjs.org/@ohif/app/-/app-$VERSION.tgz}"
# `npm view @ohif/app@3.13.2 dist.integrity`
INTEGRITY=sha512-WZdxmpmG7rqFgW9ZJLcbgr3XCtLi1KDNPoMaeY5PPe6j4G4fjEjjkycZM6C6Zk2F87BKxFfpq+jd5xXZB9E8EA==
DEST="${OHIF_DIR:-var/ohif}"

if [ -f "$DEST/VERSION" ] && [ "$(cat "$DEST/VERSION")" = "$VERSION" ] && grep -q 'src="/viewer/app-config.js"' "$DEST/dist/index.html" 2>/dev/null; then
    echo "fetch_ohif: @ohif/app $VERSION already in $DEST/"
    exit 0
fi

work=$(mktemp -d "${TMPDIR:-/tmp}/ohif.XXXXXX")
trap 'rm -rf "$work"' EXIT
echo "fetch_ohif: downloading $TARBALL_URL"
curl -fsSL --retry 2 --connect-timeout 15 -o "$work/app.tgz" "$TARBALL_URL"

got="sha512-$(openssl dgst -sha512 -binary "$work/app.tgz" | base64 -w0)"
if [ "$got" != "$INTEGRITY" ]; then
    echo "fetch_ohif: integrity mismatch for @ohif/app $VERSION: expected $INTEGRITY, got $got" >&2
    exit 1
fi

mkdir -p "$work/unpacked"
tar -xzf "$work/app.tgz" -C "$work/unpacked" --no-same-owner package/dist package/package.json package/LICENSE 2>/dev/null \
    || tar -xzf "$work/app.tgz" -C "$work/unpacked" --no-same-owner package/dist package/package.json
test -f "$work/unpacked/package/dist/index.html" || { echo "fetch_ohif: no dist/index.html in the package" >&2; exit 1; }

# The npm build assumes the site's root ("/"): index.html's links, window.PUBLIC_URL, webpack's
# public path in the bundles that load chunks, workers and WebAssembly, the stylesheet's font and
# the web manifest's icons. radqueue serves it at $MOUNT (tasks/ohif.py), so those roots are
# rewritten once, here, after the integrity check.
MOUNT=/viewer/
dist="$work/unpacked/package/dist"
sed -i -E "s#(href|src)=\"/#\1=\"$MOUNT#g; s#window\.PUBLIC_URL=\"/\"#window.PUBLIC_URL=\"$MOUNT\"#g" "$dist/index.html"
grep -rlZ --include='*.js' '__webpack_require__.p = "/";' "$dist" \
    | xargs -0 -r sed -i "s#__webpack_require__\.p = \"/\";#__webpack_require__.p = \"$MOUNT\";#"
sed -i "s#url(/#url($MOUNT#g" "$dist"/*.css  # the font the stylesheet loads
sed -i -E "s#\"(src|start_url|scope)\": \"/#\"\1\": \"$MOUNT#g" "$dist/manifest.json"
grep -q "src=\"${MOUNT}app-config.js\"" "$dist/index.html" || { echo "fetch_ohif: could not rebase index.html to $MOUNT" >&2; exit 1; }
echo "$VERSION" > "$work/unpacked/package/VERSION"

# Swap in whole: a server reading $DEST never sees half a build.
mkdir -p "$(dirname "$DEST")"
rm -rf "$DEST.old"
[ -e "$DEST" ] && mv "$DEST" "$DEST.old"
mv "$work/unpacked/package" "$DEST"
rm -rf "$DEST.old"
echo "fetch_ohif: @ohif/app $VERSION (integrity verified) in $DEST/"
