-- Order events owed to the broker: a transactional outbox.
--
-- Every change of an order's state writes one row here in the same
-- transaction as the change (the writers' batch, the reconciler's replay
-- through the same path, a keyed purchase voided before it was sold), so an
-- event exists exactly when its state was committed. The relay publishes
-- unpublished rows to NATS JetStream in id order and stamps `published_at`
-- once the broker acknowledged them; published rows are deleted after
-- SECKILL_OUTBOX_KEEP_MINUTES. `kind` is free text ("order.confirmed",
-- "order.failed", ...): a new kind needs no migration.
CREATE TABLE outbox (
    id            BIGSERIAL   PRIMARY KEY,
    order_no      UUID        NOT NULL,
    event_id      BIGINT      NOT NULL,
    kind          TEXT        NOT NULL CHECK (kind LIKE 'order.%'),
    payload       JSONB       NOT NULL,
    created_at    TIMESTAMPTZ NOT NULL DEFAULT now(),
    published_at  TIMESTAMPTZ
);
-- The relay's queue: only rows still owed, in publication order.
CREATE INDEX outbox_unpublished_idx ON outbox (id) WHERE published_at IS NULL;
-- No unique (order_no, kind) index: rows are written only by the statement
-- that inserted or changed the order (a replay inserts nothing new, so owes
-- nothing new), and the broker deduplicates on "<order_no>:<kind>" anyway;
-- the index would cost the writers a random-key B-tree insert per order.
