#!/usr/bin/env python3
"""After a fuzz run: nothing a rejected request sent was created, and every
acknowledged creation is there.

Reads what schemathesis sent and got (its HAR report), lets the writers
drain, then holds Postgres and Redis to the 2xx answers alone:

- events: exactly the seeded one and those a 201 of POST /admin/events named;
- orders: exactly the order_nos a 202 of a purchase named (SPEC I5 both ways);
- wallets: exactly the seeded ones and those a 200 of PUT /admin/wallets/{id}
  or POST /admin/wallets/seed created;
- Redis: no key of an event that does not exist;
- every event passes the invariant checker (GET /admin/events/{id}/invariants).
"""

import argparse
import json
import re
import subprocess
import sys
import time
import urllib.request
from urllib.parse import urlparse

PURCHASE = re.compile(r"^/api/events/(\d+)/purchase$")
WALLET = re.compile(r"^/admin/wallets/(\d+)$")
EVENT_TAG = re.compile(r"\{(\d+)\}")


def body_of(entry):
    text = entry["response"].get("content", {}).get("text") or ""
    try:
        return json.loads(text)
    except ValueError:
        return None


def expected_from(har, seeded_event, seeded_wallets):
    events, orders, wallet_ranges = {seeded_event}, set(), [seeded_wallets]
    rejected = 0
    for entry in har["log"]["entries"]:
        method = entry["request"]["method"].upper()
        path = urlparse(entry["request"]["url"]).path
        status = entry["response"]["status"]
        body = body_of(entry)
        if status >= 300:
            rejected += 1
            continue
        if method == "POST" and path == "/admin/events" and status == 201:
            events.add(body["id"])
        elif method == "POST" and PURCHASE.match(path) and status == 202:
            orders.add(body["order_no"])
        elif method == "PUT" and WALLET.match(path) and status == 200:
            wallet_ranges.append((body["user_id"], body["user_id"]))
        elif method == "POST" and path == "/admin/wallets/seed" and status == 200:
            first = body["first_user_id"]
            wallet_ranges.append((first, first + body["count"] - 1))
    return events, orders, wallet_ranges, rejected, len(har["log"]["entries"])


def psql(url, sql):
    out = subprocess.run(["psql", url, "-tAq", "-c", sql], check=True, capture_output=True, text=True)
    return [line for line in out.stdout.splitlines() if line]


def admin_get(base, token, path):
    request = urllib.request.Request(base + path, headers={"authorization": f"Bearer {token}"})
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.load(response)


def drain(base, token, events, deadline_secs=60):
    deadline = time.monotonic() + deadline_secs
    for event in sorted(events):
        while admin_get(base, token, f"/admin/events/{event}")["pending"] > 0:
            if time.monotonic() > deadline:
                return f"event {event}: intents still pending after {deadline_secs}s"
            time.sleep(0.2)
    return None


def in_ranges(user_id, ranges):
    return any(lo <= user_id <= hi for lo, hi in ranges)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--har", required=True)
    parser.add_argument("--base", required=True)
    parser.add_argument("--admin-token", required=True)
    parser.add_argument("--database-url", required=True)
    parser.add_argument("--redis-url", required=True)
    parser.add_argument("--prefix", required=True)
    parser.add_argument("--seeded-event", type=int, required=True)
    parser.add_argument("--seeded-wallets", required=True, help="FIRST:COUNT")
    args = parser.parse_args()

    first, count = (int(x) for x in args.seeded_wallets.split(":"))
    with open(args.har, encoding="utf-8") as f:
        har = json.load(f)
    events, orders, wallet_ranges, rejected, sent = expected_from(
        har, args.seeded_event, (first, first + count - 1)
    )
    findings = []
    stuck = drain(args.base, args.admin_token, events)
    if stuck:
        findings.append(stuck)

    in_db = {int(x) for x in psql(args.database_url, "SELECT id FROM events")}
    if in_db != events:
        findings.append(
            f"events: created by no 201 {sorted(in_db - events)}; acknowledged but missing {sorted(events - in_db)}"
        )
    in_db = set(psql(args.database_url, "SELECT order_no FROM orders"))
    if in_db != orders:
        findings.append(
            f"orders: created by no 202 {sorted(in_db - orders)[:10]}; acknowledged but missing {sorted(orders - in_db)[:10]}"
        )
    stray = [
        int(x)
        for x in psql(args.database_url, "SELECT user_id FROM wallets")
        if not in_ranges(int(x), wallet_ranges)
    ]
    if stray:
        findings.append(f"wallets created by no 2xx: {stray[:10]}")

    keys = subprocess.run(
        ["redis-cli", "-u", args.redis_url, "--scan", "--pattern", f"{args.prefix}:*"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.split()
    orphans = sorted(
        {int(m.group(1)) for key in keys if (m := EVENT_TAG.search(key)) and int(m.group(1)) not in events}
    )
    if orphans:
        findings.append(f"Redis keys of events that do not exist: {orphans[:10]}")

    for event in sorted(events):
        report = admin_get(args.base, args.admin_token, f"/admin/events/{event}/invariants")
        if not report["ok"]:
            failed = [c for c in report["checks"] if not c["ok"]]
            findings.append(f"event {event}: invariants fail: {failed}")

    print(
        f"audit: {sent} requests, {rejected} rejected; {len(events)} events, {len(orders)} orders "
        f"acknowledged and found exactly; {len(keys)} Redis keys checked"
    )
    for finding in findings:
        print(f"audit: FAIL {finding}", file=sys.stderr)
    return 1 if findings else 0


if __name__ == "__main__":
    sys.exit(main())
