#!/usr/bin/env bash
# Builds mosquitto/passwd from .env (controller, registry) and agents.txt ("agent-id password" lines).
set -euo pipefail
cd "$(dirname "$0")"
[ -f .env ] || { echo "copy .env.example to .env and set the passwords first" >&2; exit 2; }
: > mosquitto/passwd
chmod 600 mosquitto/passwd
add() { mosquitto_passwd -b mosquitto/passwd "$1" "$2"; }
if ! command -v mosquitto_passwd >/dev/null; then
  add() { docker run --rm -v "$PWD/mosquitto:/m" eclipse-mosquitto:2 mosquitto_passwd -b /m/passwd "$1" "$2"; }
fi
while IFS='=' read -r key value; do
  case "$key" in
    CONTROLLER_MQTT_PASSWORD) add controller "$value" ;;
    REGISTRY_MQTT_PASSWORD) add registry "$value" ;;
  esac
done < <(grep -v '^\s*#' .env | grep '=')
if [ -f agents.txt ]; then
  while read -r agent password; do
    [ -n "$agent" ] && [ "${agent#\#}" = "$agent" ] && add "$agent" "$password"
  done < agents.txt
fi
echo "wrote mosquitto/passwd"
