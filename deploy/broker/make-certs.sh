#!/usr/bin/env bash
# Make the TLS material for the lepton broker with openssl: a private CA, the broker's server
# certificate, and (optionally) one client certificate per device for mutual TLS.
#
#   make-certs.sh ca     DIR                        DIR/ca.pem + DIR/ca.key (kept if present)
#   make-certs.sh server DIR HOSTNAME [SAN ...]     DIR/server.pem + DIR/server.key
#   make-certs.sh device DIR DEVICE_ID              DIR/devices/DEVICE_ID.pem + .key
#
# SANs are host names or IP addresses (127.0.0.1, ::1 and 'localhost' are always added to the
# server certificate so the controller on the broker host can connect too). Keys are ECDSA
# P-256, unencrypted, mode 0600; distribute only ca.pem (to every agent: the pinned CA) and each
# device's own pair. Env: CA_DAYS (default 3650), CERT_DAYS (default 825).
set -euo pipefail

CA_DAYS=${CA_DAYS:-3650}
CERT_DAYS=${CERT_DAYS:-825}

die() { echo "make-certs.sh: error: $*" >&2; exit 2; }
usage() { sed -n '2,12p' "$0" | sed 's/^# \{0,1\}//' >&2; exit 2; }

command -v openssl >/dev/null || die "openssl is not installed: apt-get install openssl"

new_key() {  # new_key PATH: an unencrypted P-256 key readable only by its owner
  (umask 077 && openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$1" 2>/dev/null)
}

need_ca() {
  [ -f "$1/ca.pem" ] && [ -f "$1/ca.key" ] || die "no CA in $1: run 'make-certs.sh ca $1' first"
}

make_ca() {
  local dir=$1
  mkdir -p "$dir"
  if [ -f "$dir/ca.pem" ] && [ -f "$dir/ca.key" ]; then
    echo "CA already in $dir/ca.pem (kept: every certificate and agent depends on it)"
    return
  fi
  new_key "$dir/ca.key"
  openssl req -x509 -new -key "$dir/ca.key" -sha256 -days "$CA_DAYS" \
    -subj "/O=lepton-edge/CN=lepton-edge broker CA" \
    -addext "basicConstraints=critical,CA:TRUE,pathlen:0" \
    -addext "keyUsage=critical,keyCertSign,cRLSign" \
    -out "$dir/ca.pem"
  echo "made CA $dir/ca.pem"
}

is_ip() { [[ $1 =~ ^[0-9]+\.[0-9]+\.[0-9]+\.[0-9]+$ || $1 == *:* ]]; }

# sign DIR NAME CN EXTENSIONS: a certificate for NAME.key, signed by the CA in DIR
sign() {
  local dir=$1 base=$2 cn=$3 ext=$4 csr
  csr=$(mktemp)
  openssl req -new -key "$base.key" -subj "/O=lepton-edge/CN=$cn" -out "$csr"
  openssl x509 -req -in "$csr" -CA "$dir/ca.pem" -CAkey "$dir/ca.key" -CAcreateserial \
    -days "$CERT_DAYS" -sha256 -extfile <(printf '%s\n' "$ext") -out "$base.pem" 2>/dev/null
  rm -f "$csr" "$dir/ca.srl"
}

make_server() {
  local dir=$1 host=$2 sans="" name
  shift 2
  need_ca "$dir"
  for name in "$host" localhost 127.0.0.1 ::1 "$@"; do
    if is_ip "$name"; then sans+="IP:$name,"; else sans+="DNS:$name,"; fi
  done
  new_key "$dir/server.key"
  sign "$dir" "$dir/server" "$host" "basicConstraints=critical,CA:FALSE
keyUsage=critical,digitalSignature,keyEncipherment
extendedKeyUsage=serverAuth
subjectAltName=${sans%,}"
  echo "made server certificate $dir/server.pem for ${sans%,}"
}

make_device() {
  local dir=$1 device=$2
  [[ $device =~ ^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$ ]] \
    || die "invalid device id '$device': use 1-64 letters, digits, '.', '_' or '-'"
  need_ca "$dir"
  mkdir -p "$dir/devices"
  new_key "$dir/devices/$device.key"
  # CN = device id, so mosquitto's use_identity_as_username maps the certificate to the
  # device's ACL entry.
  sign "$dir" "$dir/devices/$device" "$device" "basicConstraints=critical,CA:FALSE
keyUsage=critical,digitalSignature
extendedKeyUsage=clientAuth"
  echo "made device certificate $dir/devices/$device.pem"
}

[ $# -ge 2 ] || usage
case $1 in
  ca) [ $# -eq 2 ] || usage; make_ca "$2" ;;
  server) [ $# -ge 3 ] || usage; make_server "${@:2}" ;;
  device) [ $# -eq 3 ] || usage; make_device "$2" "$3" ;;
  *) usage ;;
esac
