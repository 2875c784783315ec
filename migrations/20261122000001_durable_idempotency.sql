-- Idempotency-Key records that bought something, durable where the money is.
--
-- Redis holds every key's record (claim, in-flight, the answer to replay);
-- this table holds, for each key whose purchase Redis accepted, the order_no
-- it produced. It is written before the 202 is sent, so a Redis that loses
-- its records (restart without persistence, the last second of an `everysec`
-- AOF, a failover to a lagging replica) cannot make a retried key buy twice:
-- a claim that finds no Redis record consults this table first and resumes
-- the recorded order_no. Rows live as long as the Redis records (the event's
-- end plus the retention) and are deleted by the engine's housekeeping.
CREATE TABLE idempotency_keys (
    user_id      BIGINT      NOT NULL CHECK (user_id > 0),
    key          TEXT        NOT NULL CHECK (length(key) BETWEEN 1 AND 255),
    -- What the request asked for ("<event_id>:<quantity>"): another request
    -- under the same key is refused (422), also after a Redis loss.
    fingerprint  TEXT        NOT NULL,
    order_no     UUID        NOT NULL,
    event_id     BIGINT      NOT NULL,
    created_at   TIMESTAMPTZ NOT NULL DEFAULT now(),
    expires_at   TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (user_id, key)
);
CREATE INDEX idempotency_keys_expires_idx ON idempotency_keys (expires_at);
