#!/usr/bin/env bash
# Make every name under .localhost (so *.cube.localhost, the sandbox wildcard domain of a single
# node) resolve to this machine's loopback for local clients, by putting glibc's `myhostname`
# NSS module (Debian package libnss-myhostname) on the `hosts:` line of /etc/nsswitch.conf,
# before `dns` and keeping everything else. Idempotent; says what it did.
#
#   scripts/local_dns.sh            # edit /etc/nsswitch.conf (needs root)
#   NSSWITCH=/path scripts/local_dns.sh   # edit another file (tests)
#
# Remote clients need a real wildcard DNS record instead: see services/proxy/README.md.
set -euo pipefail
file="${NSSWITCH:-/etc/nsswitch.conf}"

if ! ls /lib/*/libnss_myhostname.so.2 /usr/lib/*/libnss_myhostname.so.2 >/dev/null 2>&1; then
  echo "local_dns: warning: libnss-myhostname is not installed (apt-get install libnss-myhostname)" >&2
fi

if [[ ! -e "$file" ]]; then
  printf 'hosts:          files myhostname dns\n' >"$file"
  echo "local_dns: created $file with 'hosts: files myhostname dns'"
  exit 0
fi

line="$(grep -E '^[[:space:]]*hosts:' "$file" | head -n1 || true)"
if [[ -z "$line" ]]; then
  printf 'hosts:          files myhostname dns\n' >>"$file"
  echo "local_dns: added 'hosts: files myhostname dns' to $file"
  exit 0
fi
if grep -qE '^[[:space:]]*hosts:.*[[:space:]]myhostname([[:space:]]|$)' <<<"$line"; then
  echo "local_dns: $file already resolves *.localhost locally (${line//  / })"
  exit 0
fi

# Insert before the first `dns` source (and any [ACTION] that follows it stays with dns);
# with no `dns` on the line, append at the end.
if grep -qE '[[:space:]]dns([[:space:]]|$)' <<<"$line"; then
  new="$(sed -E 's/([[:space:]])dns([[:space:]]|$)/\1myhostname dns\2/' <<<"$line")"
else
  new="$line myhostname"
fi
tmp="$(mktemp "${file}.XXXXXX")"
awk -v old="$line" -v new="$new" 'done != 1 && $0 == old { print new; done = 1; next } { print }' "$file" >"$tmp"
chmod --reference="$file" "$tmp" 2>/dev/null || chmod 644 "$tmp"
mv -f "$tmp" "$file"
echo "local_dns: $file: '$line' -> '$new'"
