#!/usr/bin/env python3
"""Drives one engine (running under callgrind) for scripts/bench-instructions.sh:
a warm-up, then the measured requests between two `callgrind_control -i
on/off` calls, over CONNECTIONS keep-alive connections at once (so the
writers and the Idempotency-Key group commits batch as they do under a
crowd). A purchase row waits for the writers to drain before switching off.

usage: instructions-drive.py BASE_URL KIND WARMUP MEASURED PID[,PID...]
(the processes whose instrumentation is switched on for the measured part)
KIND: healthz | event_page | keyed (purchases with an Idempotency-Key) |
      selling (plain purchases) | sold_out (plain purchases after sell-out)
Prints one JSON line: the answers counted by status in the measured part.
"""
import base64, hashlib, hmac, http.client, json, os, subprocess, sys, threading, time, urllib.parse, uuid

CONNECTIONS = int(os.environ.get("INSTR_CONNECTIONS", "16"))


def jwt(secret: bytes, user: int) -> str:
    def b64(data: bytes) -> str:
        return base64.urlsafe_b64encode(data).rstrip(b"=").decode()
    head = b64(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
    body = b64(json.dumps({"sub": str(user), "exp": int(time.time()) + 3600}).encode())
    sig = hmac.new(secret, f"{head}.{body}".encode(), hashlib.sha256).digest()
    return f"{head}.{body}.{b64(sig)}"


def main() -> None:
    base, kind, warmup, measured, pid = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
    admin = os.environ["SECKILL_ADMIN_TOKEN"]
    secret = os.environ["SECKILL_JWT_SECRET"].encode()
    url = urllib.parse.urlparse(base)

    def connect():
        return http.client.HTTPConnection(url.hostname, url.port, timeout=300)

    local = threading.local()

    def call(method, path, body=None, headers=None):
        if not hasattr(local, "conn"):
            local.conn = connect()
        h = dict(headers or {})
        if body is not None:
            h["content-type"] = "application/json"
        for attempt in (1, 2):
            try:
                local.conn.request(method, path, body=None if body is None else json.dumps(body), headers=h)
                r = local.conn.getresponse()
                return r.status, r.read()
            except (http.client.RemoteDisconnected, ConnectionError):
                # An idle keep-alive connection the engine closed: open another.
                if attempt == 2:
                    raise
                local.conn.close()
                local.conn = connect()

    total = warmup + measured
    stock = 1 if kind == "sold_out" else total + 10
    status, data = call("POST", "/admin/events", {
        "name": "instructions", "price": 1, "stock": stock, "per_user_limit": 1,
        "starts_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() - 5)),
        "ends_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() + 3600)),
    }, {"authorization": f"Bearer {admin}"})
    assert status == 201, (status, data)
    event = json.loads(data)["id"]
    status, data = call("POST", f"/admin/events/{event}/preheat", None, {"authorization": f"Bearer {admin}"})
    assert status == 200, (status, data)
    status, data = call("POST", "/admin/wallets/seed", {"first_user_id": 1, "count": total + 10, "balance": 10},
                        {"authorization": f"Bearer {admin}"})
    assert status == 200, (status, data)
    tokens = [jwt(secret, u) for u in range(1, total + 2)]
    if kind == "sold_out":
        # The one unit goes to the last shopper; every measured purchase is refused.
        call("POST", f"/api/events/{event}/purchase", {"quantity": 1},
             {"authorization": f"Bearer {tokens[-1]}"})

    def one(i):
        if kind == "healthz":
            return call("GET", "/healthz")[0]
        if kind == "event_page":
            return call("GET", f"/api/events/{event}")[0]
        headers = {"authorization": f"Bearer {tokens[i]}"}
        if kind == "keyed":
            headers["idempotency-key"] = str(uuid.uuid4())
        return call("POST", f"/api/events/{event}/purchase", {"quantity": 1}, headers)[0]

    counts = {}
    lock = threading.Lock()

    def run(first, last, record):
        def worker(k):
            for i in range(first + k, last, CONNECTIONS):
                s = one(i)
                if record:
                    with lock:
                        counts[s] = counts.get(s, 0) + 1
        threads = [threading.Thread(target=worker, args=(k,)) for k in range(CONNECTIONS)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()

    def pending():
        status, data = call("GET", f"/admin/events/{event}", None, {"authorization": f"Bearer {admin}"})
        return json.loads(data)["pending"] if status == 200 else 0

    def drained():
        # Below the full layer nothing is persisted: nothing drains.
        if os.environ.get("INSTR_DRAIN") != "1":
            return
        deadline = time.time() + 120
        while pending() > 0 and time.time() < deadline:
            time.sleep(0.2)

    run(0, warmup, False)
    drained()
    for p in pid.split(","):
        subprocess.run(["callgrind_control", "-i", "on", p], check=True, stdout=subprocess.DEVNULL)
    run(warmup, total, True)
    if kind in ("keyed", "selling"):
        drained()
    for p in pid.split(","):
        subprocess.run(["callgrind_control", "-i", "off", p], check=True, stdout=subprocess.DEVNULL)
    print(json.dumps({"kind": kind, "event": event, "answers": counts}))


if __name__ == "__main__":
    main()
