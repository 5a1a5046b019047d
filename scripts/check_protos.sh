#!/usr/bin/env bash
# Check that the committed generated code matches protos/ (part of make lint): run the generators
# (scripts/gen_protos.sh, scripts/gen_envd_protos.sh) in a scratch copy of the source tree and fail,
# with a summary of the differences, if they change, add or remove any file. The work tree is not
# touched. The generators are pinned (grpcio-tools, betterproto in requirements.lock), so the same
# protos give the same bytes.
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$PWD
[[ -x .venv/bin/python ]] || { echo "check_protos: no .venv; run make setup" >&2; exit 2; }

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
# Two copies of the tracked and untracked-but-not-ignored files: "before" is what the generators are
# compared against, "after" is regenerated. Copying both at once keeps the comparison exact even
# while files of the work tree change.
mkdir "$tmp/before" "$tmp/after"
git ls-files -z --cached --others --exclude-standard \
  | while IFS= read -r -d '' f; do [[ -e "$f" && "$f" != .venv* ]] && printf '%s\0' "$f"; done > "$tmp/files"
tar -C "$repo" --null -T "$tmp/files" -cf - | tar -C "$tmp/before" -xf -
cp -a "$tmp/before/." "$tmp/after/"
ln -s "$repo/.venv" "$tmp/after/.venv"

for gen in scripts/gen_protos.sh scripts/gen_envd_protos.sh; do
  if ! out=$(bash "$tmp/after/$gen" 2>&1); then
    echo "check_protos: $gen failed:" >&2
    echo "$out" >&2
    exit 1
  fi
done

if diff -rq -x __pycache__ -x .venv "$tmp/before" "$tmp/after" > "$tmp/summary"; then
  echo "check_protos: generated code matches protos/"
  exit 0
fi
echo "check_protos: generated code is out of date with protos/ (run make protos and commit the result):" >&2
while IFS= read -r line; do
  case "$line" in
    "Files $tmp/before/"*) f=${line#"Files $tmp/before/"}; echo "  changed: ${f%% and *}" ;;
    "Only in $tmp/before"*) f=${line#"Only in $tmp/before"}; f=${f#/}; echo "  in the tree, not generated: ${f/: //}" ;;
    "Only in $tmp/after"*) f=${line#"Only in $tmp/after"}; f=${f#/}; echo "  generated, not in the tree: ${f/: //}" ;;
    *) echo "  $line" ;;
  esac
done < "$tmp/summary" >&2
diff -ru -x __pycache__ -x .venv "$tmp/before" "$tmp/after" 2>/dev/null \
  | sed -e "s|$tmp/before/|committed: |" -e "s|$tmp/after/|regenerated: |" | cut -c1-200 | head -n 60 >&2 || true
exit 1
