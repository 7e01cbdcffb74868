#!/usr/bin/env bash
# lego `exec` DNS provider hook: publish/remove a dns-01 TXT record in the test DNS server
# (conformance/testdns.py), which serves files named after the FQDN from $TXT_DIR.
#   EXEC_PATH=conformance/acme/lego_dns_hook.sh TXT_DIR=/tmp/txt lego --dns exec ...
# lego calls it as: <present|cleanup> <fqdn with trailing dot> <TXT value>
set -euo pipefail
action=$1 fqdn=${2%.} value=$3
file="${TXT_DIR:?set TXT_DIR}/$fqdn"
case "$action" in
  present) printf '%s\n' "$value" >> "$file" ;;
  cleanup) [ -f "$file" ] && grep -vxF "$value" "$file" > "$file.tmp" || true
           mv -f "$file.tmp" "$file" 2>/dev/null || true
           [ -s "$file" ] || rm -f "$file" ;;
  timeout) echo '{"timeout": 30, "interval": 1}' ;;
  *) ;;
esac
