#!/usr/bin/env python3
"""Creates COUNT idle flash sales `<prefix>-<n>` (stock 10) through the API, CONCURRENCY at a
time over keep-alive connections, for scale-bench.sh. Exits 1 if any creation failed.

    create-campaigns.py URL ADMIN_TOKEN PREFIX FIRST COUNT [CONCURRENCY]
"""
import http.client
import json
import sys
import threading
import urllib.parse

url, token, prefix, first, count = sys.argv[1:6]
first, count = int(first), int(count)
concurrency = int(sys.argv[6]) if len(sys.argv) > 6 else 16
target = urllib.parse.urlsplit(url)
lock = threading.Lock()
state = {"next": first, "failed": 0}


def worker():
    connection = http.client.HTTPConnection(target.hostname, target.port, timeout=30)
    while True:
        with lock:
            n = state["next"]
            if n >= first + count:
                return
            state["next"] = n + 1
        campaign = f"{prefix}-{n}"
        body = json.dumps({"id": campaign, "kind": "flash_sale", "sku": "idle", "stock": 10,
                           "per_user_limit": 1})
        headers = {"content-type": "application/json", "authorization": f"Bearer {token}",
                   "idempotency-key": f"create-{campaign}"}
        for _ in range(3):
            try:
                connection.request("POST", "/v1/campaigns", body, headers)
                response = connection.getresponse()
                response.read()
                if response.status in (200, 201):
                    break
            except (OSError, http.client.HTTPException):
                connection.close()
                connection = http.client.HTTPConnection(target.hostname, target.port, timeout=30)
        else:
            with lock:
                state["failed"] += 1


threads = [threading.Thread(target=worker) for _ in range(concurrency)]
for thread in threads:
    thread.start()
for thread in threads:
    thread.join()
print(f"created {count - state['failed']} of {count}")
sys.exit(1 if state["failed"] else 0)
