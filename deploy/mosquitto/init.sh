#!/bin/sh
# Writes mosquitto's password file from the environment (run by the mosquitto-init service
# before the broker starts; nothing secret is stored in the repository).
#   MQTT_GATEWAY_PASSWORD    password of the user karkhana-gateway
#   KARKHANA_EDGE_AGENT_ID   agent id of the edge agent, which is also its user name
#   MQTT_EDGE_PASSWORD       that agent's password
#   MQTT_PASSWD_FILE         where to write (default /mosquitto/auth/passwd)
# Further agents (on other hosts) are hashed entries in extra.passwd next to that file,
# written with mosquitto_passwd (docs/deployment.md#broker-accounts-and-acl); they are copied
# in, except entries for the two users above, which always come from the environment.
set -eu

out="${MQTT_PASSWD_FILE:-/mosquitto/auth/passwd}"
gateway_user="karkhana-gateway"
min_length=12

fail() {
    echo "mosquitto-init: $*" >&2
    exit 1
}

check_password() {  # name value user
    [ -n "$2" ] || fail "$1 is empty; set it in .env"
    [ "${#2}" -ge "$min_length" ] || fail "$1 is shorter than $min_length characters"
    [ "$2" != "$3" ] || fail "$1 must not be the user name"
}

agent="${KARKHANA_EDGE_AGENT_ID:-}"
case "$agent" in
    "") fail "KARKHANA_EDGE_AGENT_ID is empty; set it to the agent_id of the edge.yaml" ;;
    "$gateway_user") fail "KARKHANA_EDGE_AGENT_ID must not be $gateway_user" ;;
    [!a-z0-9]* | *[!a-z0-9_-]*) fail "KARKHANA_EDGE_AGENT_ID '$agent' is not [a-z0-9][a-z0-9_-]*" ;;
esac
check_password MQTT_GATEWAY_PASSWORD "${MQTT_GATEWAY_PASSWORD:-}" "$gateway_user"
check_password MQTT_EDGE_PASSWORD "${MQTT_EDGE_PASSWORD:-}" "$agent"
[ "$MQTT_GATEWAY_PASSWORD" != "$MQTT_EDGE_PASSWORD" ] ||
    fail "MQTT_GATEWAY_PASSWORD and MQTT_EDGE_PASSWORD must differ"

mkdir -p "$(dirname "$out")"
tmp="$out.tmp"
rm -f "$tmp"
: > "$tmp"
chmod 0600 "$tmp"
mosquitto_passwd -b "$tmp" "$gateway_user" "$MQTT_GATEWAY_PASSWORD"
mosquitto_passwd -b "$tmp" "$agent" "$MQTT_EDGE_PASSWORD"
extra="$(dirname "$out")/extra.passwd"
extra_users=""
if [ -f "$extra" ]; then
    # grep exits 1 when it selects nothing, 2 on an error.
    grep -v -E "^($gateway_user|$agent):" "$extra" >> "$tmp" || [ "$?" -eq 1 ]
    extra_users="$(grep -v -E "^($gateway_user|$agent):" "$extra" | cut -d: -f1 | tr '\n' ' ')" ||
        [ "$?" -eq 1 ]
fi
# The broker drops root and reads the file as the mosquitto user.
if [ "$(id -u)" = 0 ] && id mosquitto >/dev/null 2>&1; then
    chown mosquitto:mosquitto "$tmp"
fi
mv -f "$tmp" "$out"
echo "mosquitto-init: wrote $out (users $gateway_user, $agent${extra_users:+, from extra.passwd: $extra_users})"
