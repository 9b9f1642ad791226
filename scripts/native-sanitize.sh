#!/usr/bin/env bash
# Builds the addon with AddressSanitizer and UndefinedBehaviorSanitizer into
# build/sanitize/ (build/Release/transgate.node is left as it is) and runs the
# native unit tests with that build: a use-after-free, an overflow or undefined
# behaviour in native/ stops the run with a report instead of passing unseen.
# Used by .ci/run; about 30 s. Needs gcc (its libasan and libubsan), as
# `npm install` does.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
out=$root/build/sanitize

# A copy of the sources with a package.json of its own, so that npm runs
# node-gyp there with the same settings (nodedir, PATH) as for `npm install`.
rm -rf "$out"
mkdir -p "$out"
cp -r binding.gyp native "$out/"
printf '{ "name": "transgate-sanitize", "private": true, "scripts": { "build": "node-gyp rebuild" } }\n' >"$out/package.json"
flags="-fsanitize=address,undefined -fno-sanitize-recover=all -fno-omit-frame-pointer -g"
(cd "$out" && CFLAGS="$flags" LDFLAGS="-fsanitize=address,undefined" npm run --silent build >build.log 2>&1) || {
  cat "$out/build.log" >&2
  echo "native-sanitize: the sanitizer build failed" >&2
  exit 1
}
addon=$out/build/Release/transgate.node
# Not grep -q: it exits at the first match, ldd then dies of SIGPIPE, and pipefail fails the check now and then.
if ! ldd "$addon" | grep libasan >/dev/null; then
  echo "native-sanitize: $addon is not linked with libasan" >&2
  exit 1
fi

# Node is not built with ASan: its runtime must be loaded first (LD_PRELOAD),
# or it refuses to start. gcc prints the bare name when it has no such file.
asan=$(gcc -print-file-name=libasan.so)
ubsan=$(gcc -print-file-name=libubsan.so)
for lib in "$asan" "$ubsan"; do
  if [ "${lib#/}" = "$lib" ] || [ ! -e "$lib" ]; then
    echo "native-sanitize: gcc has no $lib (install gcc's libasan and libubsan)" >&2
    exit 1
  fi
done

[ -f dist/test/unit/native.test.js ] || npm run --silent build
tests=(dist/test/unit/native*.test.js dist/test/unit/splice-relay.test.js)

# detect_leaks=0: Node itself does not free everything at exit. halt_on_error
# and abort_on_error: the first report ends the test process, so its test fails.
# TRANSGATE_ADDON: src/native/index.ts then loads this build and no other.
echo "native-sanitize: ${tests[*]} with $addon"
LD_PRELOAD="$asan $ubsan" \
  ASAN_OPTIONS=detect_leaks=0:halt_on_error=1:abort_on_error=1 \
  UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1 \
  TRANSGATE_ADDON=$addon \
  node --test "${tests[@]}"
