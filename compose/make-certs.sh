#!/usr/bin/env bash
# TLS for the broker's 8883 listener: ./make-certs.sh broker.example.com [more names or IPs ...]
# Makes a CA once (ca/ca.key stays here, outside what the broker mounts; ca.crt goes to every agent)
# and a server certificate for the given names plus "mosquitto" and "localhost", valid 825 days.
# Writes mosquitto/certs/{ca.crt,server.crt,server.key}; server.key is mode 0600 owned by the broker's
# uid (1883; see owner.sh). Run it again to reissue the server certificate under the same CA.
# CERTS_DIR, CA_DIR, BROKER_UID and BROKER_GID override the defaults (the tests use them).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
. "$here/owner.sh"
[ $# -ge 1 ] || { echo "usage: $0 BROKER_HOST_NAME_OR_IP [...]" >&2; exit 2; }
certs=${CERTS_DIR:-$here/mosquitto/certs}
ca=${CA_DIR:-$here/ca}
uid=${BROKER_UID:-1883} gid=${BROKER_GID:-1883}
mkdir -p "$certs" "$ca"
chmod 700 "$ca"
umask 077

if [ ! -f "$ca/ca.key" ]; then
  openssl req -x509 -new -newkey rsa:3072 -nodes -keyout "$ca/ca.key" -out "$ca/ca.crt" -days 3650 \
    -subj "/CN=edgebatch broker CA" -addext "basicConstraints=critical,CA:TRUE" \
    -addext "keyUsage=critical,keyCertSign,cRLSign" 2>/dev/null
fi

san="DNS:mosquitto,DNS:localhost,IP:127.0.0.1"
for name in "$@"; do
  if [[ $name =~ ^[0-9.]+$ || $name == *:* ]]; then san="$san,IP:$name"; else san="$san,DNS:$name"; fi
done
work=$(mktemp -d "$certs/.new.XXXXXX")
trap 'rm -rf "$work"' EXIT
openssl req -new -newkey rsa:3072 -nodes -keyout "$work/server.key" -out "$work/server.csr" \
  -subj "/CN=$1" 2>/dev/null
printf 'basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\nsubjectAltName=%s\n' \
  "$san" > "$work/ext.cnf"
openssl x509 -req -in "$work/server.csr" -CA "$ca/ca.crt" -CAkey "$ca/ca.key" -CAcreateserial \
  -out "$work/server.crt" -days 825 -sha256 -extfile "$work/ext.cnf" 2>/dev/null

cp "$ca/ca.crt" "$certs/ca.crt"
chmod 644 "$certs/ca.crt" "$work/server.crt"   # public: certificates only
mv -f "$work/server.crt" "$certs/server.crt"
install_for "$uid" "$gid" "$work/server.key" "$certs/server.key"
echo "wrote $certs/{ca.crt,server.crt,server.key} for $san; give agents $certs/ca.crt"
