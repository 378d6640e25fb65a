#!/usr/bin/env bash
# Makes a private CA and one certificate for every grlo role, for the TLS overlay
# (deploy/k8s/overlays/cpu-tls):
#
#   bash deploy/tls-certs.sh DIR [NAMESPACE]     # NAMESPACE: grlo by default
#
# writes into DIR (created if missing; existing files are not overwritten):
#   ca.crt, ca.key      the CA (keep ca.key somewhere safe: it signs certificates)
#   grlo.crt, grlo.key  the roles' certificate, valid as a server and as a client (mutual TLS),
#                       for the Services' names: grlo-coordinator, grlo-reward-server,
#                       grlo-learner, their NAME.NAMESPACE.svc and .svc.cluster.local forms, and
#                       localhost (`grlo ctl` through a port-forward, or in the coordinator's pod)
# then make the Secret the overlay mounts:
#   kubectl -n grlo create secret generic grlo-tls \
#     --from-file=tls.crt=DIR/grlo.crt --from-file=tls.key=DIR/grlo.key --from-file=ca.crt=DIR/ca.crt
# Needs openssl (1.1.1 or newer). Keys are ECDSA P-256; the certificate is valid for 825 days.
set -euo pipefail

dir=${1:?usage: bash deploy/tls-certs.sh DIR [NAMESPACE]}
namespace=${2:-grlo}
mkdir -p "$dir"
for file in ca.crt ca.key grlo.crt grlo.key; do
    [ ! -e "$dir/$file" ] || { echo "tls-certs.sh: $dir/$file exists; not overwriting it" >&2; exit 1; }
done

names="DNS:localhost"
for service in grlo-coordinator grlo-reward-server grlo-learner; do
    names="$names,DNS:$service,DNS:$service.$namespace.svc,DNS:$service.$namespace.svc.cluster.local"
done

umask 077
openssl req -x509 -new -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -sha256 \
    -days 3650 -subj "/CN=grlo CA" -keyout "$dir/ca.key" -out "$dir/ca.crt" \
    -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" \
    2>/dev/null
openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -sha256 \
    -subj "/CN=grlo" -keyout "$dir/grlo.key" -out "$dir/grlo.csr" 2>/dev/null
cat >"$dir/grlo.ext" <<EOF
subjectAltName=$names
basicConstraints=critical,CA:FALSE
keyUsage=critical,digitalSignature
extendedKeyUsage=serverAuth,clientAuth
EOF
openssl x509 -req -in "$dir/grlo.csr" -CA "$dir/ca.crt" -CAkey "$dir/ca.key" -CAcreateserial \
    -days 825 -sha256 -extfile "$dir/grlo.ext" -out "$dir/grlo.crt" 2>/dev/null
rm -f "$dir/grlo.csr" "$dir/grlo.ext" "$dir/ca.srl"
chmod 644 "$dir/ca.crt" "$dir/grlo.crt"
echo "tls-certs.sh: wrote $dir/ca.crt, ca.key, grlo.crt, grlo.key ($names)"
