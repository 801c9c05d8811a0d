#!/usr/bin/env bash
# Run as is against a running service (FS, FLASHSALE_ADMIN_TOKENS and FLASHSALE_STORE_TOKENS —
# the service's own variables — override the defaults).
export FS=${FS:-http://127.0.0.1:8080}
AT=${FLASHSALE_ADMIN_TOKENS:-adm-demo} ST=${FLASHSALE_STORE_TOKENS:-sto-demo}  # the service's own variables
export ADMIN="Authorization: Bearer ${AT%%,*}" STORE="Authorization: Bearer ${ST%%,*}" JSON='Content-Type: application/json'
C=phone-$(date +%s%N)   # a fresh campaign id
first_id() { sed -E 's/^\{"id":"([^"]+)".*/\1/'; }

# 1. An operator creates a sale: 2 units, 1 per user, holds last 5 seconds.
curl -s -H "$ADMIN" -H "$JSON" $FS/v1/campaigns \
  -d "{\"id\":\"$C\",\"kind\":\"flash_sale\",\"sku\":\"phone-x\",\"stock\":2,\"per_user_limit\":1,\"hold_seconds\":5}"; echo

# 2. The store reserves for alice.
A=$(curl -s -H "$STORE" -H "$JSON" -H 'Idempotency-Key: order-alice-1' \
  $FS/v1/campaigns/$C/reservations -d '{"user_id":"alice"}' | first_id); echo "$A"

# 3. Alice tries again with a new order: over her limit.
curl -s -H "$STORE" -H "$JSON" -H 'Idempotency-Key: order-alice-2' \
  $FS/v1/campaigns/$C/reservations -d '{"user_id":"alice"}'; echo

# 4. Bob takes the last unit; carol finds it sold out.
B=$(curl -s -H "$STORE" -H "$JSON" -H 'Idempotency-Key: order-bob-1' \
  $FS/v1/campaigns/$C/reservations -d '{"user_id":"bob"}' | first_id)
curl -s -H "$STORE" -H "$JSON" -H 'Idempotency-Key: order-carol-1' \
  $FS/v1/campaigns/$C/reservations -d '{"user_id":"carol"}'; echo
curl -s $FS/v1/campaigns/$C/availability; echo

# 5. Alice pays: the store confirms. Bob changes his mind: the store cancels.
curl -s -X POST -H "$STORE" $FS/v1/reservations/$A/confirm; echo
curl -s -X POST -H "$STORE" $FS/v1/reservations/$B/cancel; echo

# 6. Carol retries and gets bob's unit, but never pays: after 5 s her hold expires.
K=$(curl -s -H "$STORE" -H "$JSON" -H 'Idempotency-Key: order-carol-2' \
  $FS/v1/campaigns/$C/reservations -d '{"user_id":"carol"}' | first_id)
sleep 6
curl -s -H "$STORE" $FS/v1/reservations/$K; echo
curl -s -H "$STORE" $FS/v1/campaigns/$C; echo
