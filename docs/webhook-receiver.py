#!/usr/bin/env python3
"""A flashsale webhook receiver that checks every delivery's signature (standard library only).
Run: WEBHOOK_SECRET=whsec_... PORT=9000 python3 docs/webhook-receiver.py"""
import hashlib, hmac, json, os, time
from http.server import BaseHTTPRequestHandler, HTTPServer

SECRET = os.environ["WEBHOOK_SECRET"].encode()

class Hook(BaseHTTPRequestHandler):
    def do_POST(self):
        body = self.rfile.read(int(self.headers["Content-Length"]))
        fields = dict(p.split("=", 1) for p in self.headers["Flashsale-Signature"].split(","))
        expected = hmac.new(SECRET, fields["t"].encode() + b"." + body, hashlib.sha256).hexdigest()
        fresh = abs(time.time() - int(fields["t"])) < 300  # refuse replays of old deliveries
        if not (hmac.compare_digest(expected, fields["v1"]) and fresh):
            self.send_response(400); self.end_headers(); return
        delivered = json.loads(body)  # a feed item {"cursor", "type", "at", ...}, or with
        for event in delivered.get("events", [delivered]):  # max_batch > 1: {"events": [...]}
            print("valid", event["cursor"], event["type"], flush=True)  # handle it idempotently by cursor
        self.send_response(204); self.end_headers()

    def log_message(self, *args):
        pass

HTTPServer(("127.0.0.1", int(os.environ.get("PORT", "9000"))), Hook).serve_forever()
