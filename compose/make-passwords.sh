#!/usr/bin/env bash
# Builds, from .env and agents.txt ("agent-id password" lines):
#   mosquitto/passwd               hashes for controller, registry, health and every agent (broker, uid 1883)
#   secrets/mosquitto_sub          the broker health check's own login, as mosquitto_sub options (uid 1883)
#   secrets/controller_mqtt_password, secrets/http_token   the controller's secrets (uid 10001)
#   secrets/prometheus_http_token  the same HTTP token, for Prometheus's scrapes (uid 65534, the image's nobody)
#   secrets/grafana_admin_password Grafana's admin password (uid 472, the image's grafana)
# Every file is mode 0600 and owned by the uid of the container that reads it (see owner.sh for why).
# The "health" user's password is random and made anew each run. Passwords reach mosquitto_passwd as
# arguments (-b) for the moment it runs; run this on a host where other users cannot list processes.
# MOSQUITTO_DIR, SECRETS_DIR, BROKER_UID/GID, CONTROLLER_UID/GID, PROMETHEUS_UID/GID and GRAFANA_UID/GID
# override the defaults (the tests use them).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
. "$here/owner.sh"
cd "$here"
env_file=${ENV_FILE:-.env}
agents=${AGENTS_FILE:-agents.txt}
mosq=${MOSQUITTO_DIR:-mosquitto}
secrets=${SECRETS_DIR:-secrets}
broker_uid=${BROKER_UID:-1883} broker_gid=${BROKER_GID:-1883}
controller_uid=${CONTROLLER_UID:-10001} controller_gid=${CONTROLLER_GID:-10001}
prometheus_uid=${PROMETHEUS_UID:-65534} prometheus_gid=${PROMETHEUS_GID:-65534}
grafana_uid=${GRAFANA_UID:-472} grafana_gid=${GRAFANA_GID:-0}
[ -f "$env_file" ] || { echo "copy .env.example to .env and set the passwords first" >&2; exit 2; }

setting() {  # the value of KEY in .env; fails if it is missing or still the example's
  local value
  value=$(grep -E "^\s*$1=" "$env_file" | tail -n 1 | cut -d= -f2-) || true
  if [ -z "$value" ] || [[ $value == change-me* ]]; then
    echo "set $1 in $env_file (it is missing or still the example value)" >&2
    exit 2
  fi
  printf '%s' "$value"
}

mkdir -p "$mosq" "$secrets"
chmod 700 "$secrets"
umask 077
work=$(mktemp -d "$here/.passwords.XXXXXX")
trap 'rm -rf "$work"' EXIT
: > "$work/passwd"
add() { mosquitto_passwd -b "$work/passwd" "$1" "$2"; }
if ! command -v mosquitto_passwd >/dev/null; then
  chmod 755 "$work" && chmod 666 "$work/passwd"   # written by the image's mosquitto user; 0600 again below
  add() { docker run --rm -v "$work:/m" "${MOSQUITTO_IMAGE:-eclipse-mosquitto:2.0.20}" mosquitto_passwd -b /m/passwd "$1" "$2"; }
fi

controller_password=$(setting CONTROLLER_MQTT_PASSWORD)
add controller "$controller_password"
add registry "$(setting REGISTRY_MQTT_PASSWORD)"
health_password=$(openssl rand -hex 24)
add health "$health_password"
if [ -f "$agents" ]; then
  while read -r agent password _; do
    case "$agent" in ''|\#*) continue ;; controller|registry|health)
      echo "$agents: $agent is a reserved user name" >&2; exit 2 ;; esac
    [ -n "$password" ] || { echo "$agents: $agent has no password" >&2; exit 2; }
    add "$agent" "$password"
  done < "$agents"
fi

printf -- '-u health\n-P %s\n' "$health_password" > "$work/mosquitto_sub"
printf '%s\n' "$controller_password" > "$work/controller_mqtt_password"
http_token=$(setting HTTP_TOKEN)
printf '%s\n' "$http_token" > "$work/http_token"
printf '%s\n' "$http_token" > "$work/prometheus_http_token"
printf '%s\n' "$(setting GRAFANA_ADMIN_PASSWORD)" > "$work/grafana_admin_password"
install_for "$broker_uid" "$broker_gid" "$work/passwd" "$mosq/passwd"
install_for "$broker_uid" "$broker_gid" "$work/mosquitto_sub" "$secrets/mosquitto_sub"
install_for "$controller_uid" "$controller_gid" "$work/controller_mqtt_password" "$secrets/controller_mqtt_password"
install_for "$controller_uid" "$controller_gid" "$work/http_token" "$secrets/http_token"
install_for "$prometheus_uid" "$prometheus_gid" "$work/prometheus_http_token" "$secrets/prometheus_http_token"
install_for "$grafana_uid" "$grafana_gid" "$work/grafana_admin_password" "$secrets/grafana_admin_password"
echo "wrote $mosq/passwd and $secrets/{mosquitto_sub,controller_mqtt_password,http_token,prometheus_http_token,grafana_admin_password}"
