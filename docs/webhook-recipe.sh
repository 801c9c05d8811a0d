#!/usr/bin/env bash
# Webhooks on one machine: starts docs/webhook-receiver.py on a free port, subscribes it to a
# new campaign's events, makes and confirms one reservation, and shows the deliveries the
# receiver checked (signature and freshness).
# The service must allow a loopback target, which it refuses by default (webhooks may only
# reach public addresses): start it with FLASHSALE_WEBHOOK_ALLOWED_HOSTS=127.0.0.0/8.
# Run as is against a running service (FS, FLASHSALE_ADMIN_TOKENS and FLASHSALE_STORE_TOKENS —
# the service's own variables — override the defaults).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
FS=${FS:-http://127.0.0.1:8080}
AT=${FLASHSALE_ADMIN_TOKENS:-adm-demo} ST=${FLASHSALE_STORE_TOKENS:-sto-demo}  # the service's own variables
export ADMIN="Authorization: Bearer ${AT%%,*}" STORE="Authorization: Bearer ${ST%%,*}" JSON='Content-Type: application/json'
PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
C=hooks-$RANDOM
log=$(mktemp)
trap 'kill $receiver 2>/dev/null || true; rm -f "$log"' EXIT

# 1. A campaign, and a webhook for its events (keep the secret: it signs every delivery).
curl -s -H "$ADMIN" -H "$JSON" $FS/v1/campaigns \
  -d "{\"id\":\"$C\",\"kind\":\"flash_sale\",\"sku\":\"mug\",\"stock\":5}" > /dev/null
HOOK=$(curl -s -H "$ADMIN" -H "$JSON" -H "Idempotency-Key: hook-$C" $FS/v1/webhooks \
  -d "{\"url\":\"http://127.0.0.1:$PORT/flashsale-hook\",\"campaign_id\":\"$C\"}")
echo "$HOOK"
SECRET=$(printf '%s' "$HOOK" | python3 -c 'import json, sys; print(json.load(sys.stdin)["secret"])')

# 2. The receiver, checking each delivery with that secret.
WEBHOOK_SECRET=$SECRET PORT=$PORT python3 "$here/webhook-receiver.py" > "$log" &
receiver=$!
sleep 0.5

# 3. An order: held, then paid.
R=$(curl -s -H "$STORE" -H "$JSON" -H "Idempotency-Key: order-$C" \
  $FS/v1/campaigns/$C/reservations -d '{"user_id":"u42"}' | sed -E 's/.*"id":"([^"]+)".*/\1/')
curl -s -X POST -H "$STORE" $FS/v1/reservations/$R/confirm > /dev/null

# 4. What the receiver got (two events: held, confirmed), within 10 s.
for _ in $(seq 1 100); do
  [ "$(grep -c '^valid' "$log" || true)" -ge 2 ] && break
  sleep 0.1
done
cat "$log"
