# Sourced by make-passwords.sh and make-certs.sh: hand a file to the user a container reads it as.
#
# The broker runs as uid 1883 (the eclipse-mosquitto image's "mosquitto"; compose says user: 1883:1883)
# and the controller as uid 10001 (Dockerfile.controller); both read their secrets through bind mounts,
# which keep the host's owner and mode. So each secret is made mode 0600 and owned by that uid: the
# container can read it and no other local user can. Mode 0644 would do for the container too, but it
# would show password hashes, private keys and the HTTP token to every account on the host.
# Changing a file's owner needs root: as root it is done directly, otherwise through sudo, and
# where there is no sudo inside a throwaway container (docker run as root, the file's folder mounted).

# install_for UID GID SOURCE TARGET: SOURCE becomes TARGET, mode 0600, owned by UID:GID. TARGET is
# replaced by a rename, so a target already owned by the container user is replaced without root.
install_for() {
  local uid=$1 gid=$2 source=$3 target=$4
  chmod 600 "$source"
  if [ "$uid" != "$(id -u)" ] || [ "$gid" != "$(id -g)" ]; then
    if [ "$(id -u)" -eq 0 ]; then
      chown "$uid:$gid" "$source"
    elif command -v sudo >/dev/null 2>&1; then
      sudo chown "$uid:$gid" "$source"
    elif command -v docker >/dev/null 2>&1; then
      local dir; dir=$(cd "$(dirname "$source")" && pwd)
      docker run --rm --user 0 --entrypoint chown -v "$dir:/f" "${MOSQUITTO_IMAGE:-eclipse-mosquitto:2.0.20}" \
        "$uid:$gid" "/f/$(basename "$source")"
    else
      echo "cannot make $target owned by uid $uid: run this as root or install sudo" >&2
      return 1
    fi
  fi
  mv -f "$source" "$target"
}
