#!/usr/bin/env bash
# Run as is against a running service (FS, FLASHSALE_ADMIN_TOKENS and FLASHSALE_STORE_TOKENS —
# the service's own variables — override the defaults).
export FS=${FS:-http://127.0.0.1:8080}
AT=${FLASHSALE_ADMIN_TOKENS:-adm-demo} ST=${FLASHSALE_STORE_TOKENS:-sto-demo}  # the service's own variables
export ADMIN="Authorization: Bearer ${AT%%,*}" STORE="Authorization: Bearer ${ST%%,*}" JSON='Content-Type: application/json'
C=team-$(date +%s%N)   # a fresh campaign id
first_id() { sed -E 's/^\{"id":"([^"]+)".*/\1/'; }
member_of() { grep -o "\"user_id\":\"$1\",\"reservation_id\":\"[^\"]*\"" | sed -E 's/.*"reservation_id":"([^"]+)"/\1/'; }

# 1. An operator creates a group buy: 6 units, groups of 3 that must form within 5 seconds.
curl -s -H "$ADMIN" -H "$JSON" $FS/v1/campaigns \
  -d "{\"id\":\"$C\",\"kind\":\"group_buy\",\"sku\":\"tea-set\",\"stock\":6,\"group\":{\"size\":3,\"window_seconds\":5}}"; echo

# 2. Ann opens a group (it holds 3 units at once); Ben and Cat join; Dan finds it full.
G=$(curl -s -H "$STORE" -H "$JSON" -H 'Idempotency-Key: open-ann' \
  $FS/v1/campaigns/$C/groups -d '{"user_id":"ann"}' | first_id); echo "$G"
curl -s -H "$STORE" -H "$JSON" -H 'Idempotency-Key: join-ben' $FS/v1/groups/$G/members -d '{"user_id":"ben"}' > /dev/null
curl -s -H "$STORE" -H "$JSON" -H 'Idempotency-Key: join-cat' $FS/v1/groups/$G/members -d '{"user_id":"cat"}'; echo
curl -s -H "$STORE" -H "$JSON" -H 'Idempotency-Key: join-dan' $FS/v1/groups/$G/members -d '{"user_id":"dan"}'; echo

# 3. All three pay: the store confirms each member's reservation and the group forms.
for who in ann ben cat; do
  R=$(curl -s -H "$STORE" $FS/v1/groups/$G | member_of $who)
  curl -s -X POST -H "$STORE" $FS/v1/reservations/$R/confirm > /dev/null
done
curl -s -H "$STORE" $FS/v1/groups/$G; echo

# 4. Dan opens a second group; Eve joins and pays, nobody else comes. After 5 s it fails:
#    both members are released (Eve must be refunded) and all 3 units return.
H=$(curl -s -H "$STORE" -H "$JSON" -H 'Idempotency-Key: open-dan' \
  $FS/v1/campaigns/$C/groups -d '{"user_id":"dan"}' | first_id)
E=$(curl -s -H "$STORE" -H "$JSON" -H 'Idempotency-Key: join-eve' $FS/v1/groups/$H/members \
  -d '{"user_id":"eve"}' | member_of eve)
curl -s -X POST -H "$STORE" $FS/v1/reservations/$E/confirm > /dev/null
sleep 6
curl -s -H "$STORE" $FS/v1/groups/$H; echo
curl -s -H "$STORE" $FS/v1/campaigns/$C; echo

# 5. The event feed tells the store whom to refund.
sleep 1
curl -s -H "$STORE" "$FS/v1/events?after=0&limit=1000" \
  | grep -o "\"type\":\"[a-z.]*\",\"at\":\"[^\"]*\",\"[a-z]*\":{[^}]*$H[^}]*}" \
  | sed -E 's/"at":"[^"]*",//; s/"(campaign_id|created_at|expires_at|quantity|leader_user_id|size)":[^,]*,//g'
