-- The sale lifecycle on the operator side: pause, and stock adjusted during
-- a sale. `events.version` counts changes to the sale's definition (name,
-- price, limit, window, stock, pause, preheat); the writers' `sold` counter
-- no longer moves it, so an operator's versioned edit is not made stale by
-- every batch of orders.

ALTER TABLE events ADD COLUMN paused_at TIMESTAMPTZ;

-- The stock the event was created with: I1 reads
-- stock_initial + Σ applied adjustments = stock_total = sold + left + pending.
ALTER TABLE events ADD COLUMN stock_initial BIGINT;
UPDATE events SET stock_initial = stock_total;
CREATE FUNCTION events_stock_initial() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    NEW.stock_initial := NEW.stock_total;
    RETURN NEW;
END;
$$;
CREATE TRIGGER events_stock_initial BEFORE INSERT ON events
    FOR EACH ROW EXECUTE FUNCTION events_stock_initial();

-- One row per stock adjustment, written (pending) before Redis is touched:
-- a crash between the two leaves a pending row the reconciler finishes.
-- `stock_total` of the event = initial stock + Σ delta of applied rows.
CREATE TABLE stock_adjustments (
    id                BIGSERIAL   PRIMARY KEY,
    event_id          BIGINT      NOT NULL REFERENCES events (id),
    delta             BIGINT      NOT NULL CHECK (delta <> 0),
    reason            TEXT        NOT NULL CHECK (length(reason) BETWEEN 1 AND 500),
    -- The operator's Idempotency-Key: a retried call is applied once.
    request_key       TEXT,
    state             TEXT        NOT NULL DEFAULT 'pending'
                                  CHECK (state IN ('pending', 'applied', 'refused')),
    refusal           TEXT,
    -- What the event held once it was applied (replayed as is).
    stock_total_after BIGINT,
    stock_left_after  BIGINT,
    created_at        TIMESTAMPTZ NOT NULL DEFAULT now(),
    settled_at        TIMESTAMPTZ,
    CHECK ((state = 'refused') = (refusal IS NOT NULL)),
    UNIQUE (event_id, request_key)
);
CREATE INDEX stock_adjustments_pending_idx ON stock_adjustments (event_id) WHERE state = 'pending';
