#!/bin/sh
# Builds the demo mesh and one Envoy bootstrap per proxy, with the meshgate CLI only.
#
# In docker compose this runs once in the `setup` container (STATE=/state,
# BOOTSTRAP=/bootstrap, OUT=/out); tests/test_compose.py runs the same script on
# the host, against temporary directories, and checks what it makes.
set -eu

STATE=${STATE:-/state}
BOOTSTRAP=${BOOTSTRAP:-/bootstrap}
OUT=${OUT:-/out}
XDS=${XDS:-meshgate:18000}            # the `meshgate` service and its --listen port
MESHGATE=${MESHGATE:-meshgate}
PYTHON=${PYTHON:-python}
export MESHGATE_DB="$STATE/meshgate.db" MESHGATE_ACTOR=compose-setup

if [ -f "$MESHGATE_DB" ]; then
    echo "setup: $MESHGATE_DB exists, nothing to do"
    exit 0
fi
mkdir -p "$STATE" "$BOOTSTRAP" "$OUT"

$MESHGATE init --trust-domain example.org
$MESHGATE mesh set --instance-grace 30s
for svc in web orders payments; do
    $MESHGATE service add "$svc" --port 8080
done

# A JWT issuer for the demo: its public keys go to the gateway, a token to ./out for curl.
$PYTHON -m meshgate.fleet.client --issuer https://idp.demo.example/ --audience shop \
    --jwks-out "$OUT/jwks.json" --token-out "$OUT/token.jwt"
$MESHGATE jwt add demo-idp --issuer https://idp.demo.example/ --audience shop --jwks-file "$OUT/jwks.json"

$MESHGATE edge add public --listen 0.0.0.0:8443 > /dev/null
$MESHGATE edge cert issue --gateway public --host shop.example.com --ca-out "$OUT/mesh-root.pem"
$MESHGATE policy allow --from edge:public --to web --id edge-to-web
$MESHGATE policy allow --from web --to orders --id web-to-orders
$MESHGATE policy allow --from '*' --to payments --id mesh-to-payments
$MESHGATE policy deny --from web --to payments --id web-never-pays
$MESHGATE edge route add public --host shop.example.com --prefix / --to web --auth jwt:demo-idp

# One sidecar per service: it declares its instance (its container's fixed address in
# docker-compose.yml), which meshgate serve registers when the sidecar connects.
sidecar() {  # name service address
    $MESHGATE proxy add "$1" --service "$2" > /dev/null
    $MESHGATE proxy bootstrap "$1" --rotate-token --server "$XDS" --admin-port 9901 \
        --address "$3" --inbound-port 15006 --app-port 8080 --out "$BOOTSTRAP/$1.json"
}
sidecar web-1 web 172.28.0.21
sidecar orders-1 orders 172.28.0.22
sidecar payments-1 payments 172.28.0.23
$MESHGATE proxy bootstrap public --rotate-token --server "$XDS" --admin-port 9901 --out "$BOOTSTRAP/public.json"

# The official Envoy image runs Envoy as user envoy (uid/gid 101); bootstraps stay 0600.
chown 101:101 "$BOOTSTRAP"/*.json 2>/dev/null || true
echo "setup: mesh ready; token and CA for curl in ./out"
