#!/usr/bin/env bash
# Makes the lab's own CA (once) and a receiver certificate signed by it.
#
#   scripts/make-cert.sh HOST_OR_IP [OUT_DIR]      (OUT_DIR defaults to ./tls)
#
# Writes OUT_DIR/ca.pem (give it to every sender with --ca-cert), and
# OUT_DIR/receiver.pem + OUT_DIR/receiver.key (give them to the receiver
# with --tls-cert / --tls-key). The CA key, OUT_DIR/ca.key, signs further
# receiver certificates when run again: keep it offline.
set -euo pipefail

host=${1:?usage: scripts/make-cert.sh HOST_OR_IP [OUT_DIR]}
out=${2:-tls}
command -v openssl >/dev/null || { apt-get update -qq && apt-get install -y -qq openssl; }
mkdir -p "$out"
cd "$out"
umask 077

if [ ! -f ca.key ]; then
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 3650 \
        -subj "/CN=logferry lab CA" -keyout ca.key -out ca.pem \
        -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" 2>/dev/null
fi

if [[ $host =~ ^[0-9.]+$ || $host == *:* ]]; then san="IP:$host"; else san="DNS:$host"; fi
openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj "/CN=$host" \
    -keyout receiver.key -out receiver.csr 2>/dev/null
printf 'subjectAltName=%s\nbasicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\n' "$san" >receiver.ext
openssl x509 -req -in receiver.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 825 \
    -extfile receiver.ext -out receiver.pem 2>/dev/null
rm -f receiver.csr receiver.ext
chmod 644 ca.pem receiver.pem

echo "made $out/receiver.pem and $out/receiver.key for $host ($san), signed by $out/ca.pem"
echo "receiver: receiver --tls-cert $out/receiver.pem --tls-key $out/receiver.key"
echo "senders:  sender https://$host:3500 LOGS --ca-cert /etc/logferry/ca.pem   (copy $out/ca.pem there)"
