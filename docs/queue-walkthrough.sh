#!/usr/bin/env bash
# Run as is against a running service (FS, FLASHSALE_ADMIN_TOKENS and FLASHSALE_STORE_TOKENS —
# the service's own variables — override the defaults).
export FS=${FS:-http://127.0.0.1:8080}
AT=${FLASHSALE_ADMIN_TOKENS:-adm-demo} ST=${FLASHSALE_STORE_TOKENS:-sto-demo}  # the service's own variables
export ADMIN="Authorization: Bearer ${AT%%,*}" STORE="Authorization: Bearer ${ST%%,*}" JSON='Content-Type: application/json'
C=queue-$(date +%s%N)   # a fresh campaign id
field() { sed -nE "s/.*\"$1\":\"([^\"]+)\".*/\1/p"; }

# 1. An operator creates a sale of 2 units that opens in 3 seconds, behind a waiting room
#    that lets 2 people a second through; a pass is good for 60 seconds.
STARTS=$(date -u -d '+3 seconds' +%Y-%m-%dT%H:%M:%SZ)
curl -s -H "$ADMIN" -H "$JSON" $FS/v1/campaigns -d "{\"id\":\"$C\",\"kind\":\"flash_sale\",\"sku\":\"tea\",
  \"stock\":2,\"starts_at\":\"$STARTS\",\"queue\":{\"admit_per_second\":2,\"pass_seconds\":60}}"; echo

# 2. Ann, Ben and Cat join before the start: no place yet (the draw is at the start).
declare -A TICKET
for who in ann ben cleo; do
  answer=$(curl -s -H "$STORE" -H "$JSON" -H "Idempotency-Key: join-$who" $FS/v1/campaigns/$C/queue \
    -d "{\"user_id\":\"$who\"}")
  echo "$answer"; TICKET[$who]=$(echo "$answer" | field ticket)
done

# 3. Reserving without a pass is refused.
curl -s -H "$STORE" -H "$JSON" -H 'Idempotency-Key: ann-early' $FS/v1/campaigns/$C/reservations \
  -d '{"user_id":"ann"}'; echo

# 4. Each polls until their turn (admitted, with a pass) or until the units are gone, and
#    reserves with the pass the moment they are let through.
for _ in $(seq 40); do
  for who in ann ben cleo; do
    [ -z "${TICKET[$who]}" ] && continue
    answer=$(curl -s -H "$STORE" $FS/v1/queue/${TICKET[$who]})
    case "$answer" in
      *'"status":"admitted"'*)
        echo "$who: $answer"
        curl -s -H "$STORE" -H "$JSON" -H "Idempotency-Key: buy-$who" -H "Flashsale-Pass: $(echo "$answer" | field pass)" \
          $FS/v1/campaigns/$C/reservations -d "{\"user_id\":\"$who\"}"; echo
        TICKET[$who]="" ;;
      *'"status":"sold_out"'*|*'"status":"expired"'*)
        echo "$who: $answer"; TICKET[$who]="" ;;
    esac
  done
  sleep 0.25
done
curl -s -H "$STORE" $FS/v1/campaigns/$C; echo
