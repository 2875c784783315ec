-- Money back and the wallet ledger.
--
-- wallet_ledger: every change of a wallet's balance is one immutable row
-- (seed, credit, correction, purchase, refund), written in the transaction
-- that changes the balance; the sum of a wallet's rows is its balance.
-- refunds: one row per refunded order (cancelled by its shopper or refunded
-- by an operator), written with the wallet credit, the order's and the
-- payment's new state in one transaction; `stock_returned` is set once the
-- order's units went back to the sale in Redis (exactly once, see refund.lua).

-- Orders end confirmed or failed, and a confirmed one may be cancelled by its
-- shopper or refunded by an operator later.
-- NOT VALID then VALIDATE: the scan of existing orders does not block writers.
ALTER TABLE orders DROP CONSTRAINT orders_status_check;
ALTER TABLE orders ADD CONSTRAINT orders_status_check
    CHECK (status IN ('confirmed', 'failed', 'cancelled', 'refunded')) NOT VALID;
ALTER TABLE orders VALIDATE CONSTRAINT orders_status_check;

-- Seconds after a purchase during which its shopper may cancel it; NULL: no
-- cancellation (an operator can still refund).
ALTER TABLE events ADD COLUMN cancel_window_seconds INTEGER
    CHECK (cancel_window_seconds > 0);

-- A payment is captured, and refunded at most once: the only change the
-- append-only rule allows.
ALTER TABLE payments ADD COLUMN state TEXT NOT NULL DEFAULT 'captured'
    CHECK (state IN ('captured', 'refunded'));
DROP TRIGGER payments_append_only ON payments;
CREATE FUNCTION payments_refund_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'UPDATE' AND OLD.state = 'captured' AND NEW.state = 'refunded'
       AND (NEW.order_no, NEW.event_id, NEW.user_id, NEW.amount, NEW.created_at)
           IS NOT DISTINCT FROM (OLD.order_no, OLD.event_id, OLD.user_id, OLD.amount, OLD.created_at) THEN
        RETURN NEW;
    END IF;
    RAISE EXCEPTION 'payments are append-only (a captured payment may only become refunded)';
END;
$$;
CREATE TRIGGER payments_refund_only BEFORE UPDATE OR DELETE ON payments
    FOR EACH ROW EXECUTE FUNCTION payments_refund_only();

CREATE TABLE wallet_ledger (
    id          BIGINT      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    user_id     BIGINT      NOT NULL,
    delta       BIGINT      NOT NULL,
    kind        TEXT        NOT NULL CHECK (kind IN ('seed', 'credit', 'correction', 'purchase', 'refund')),
    reason      TEXT        NOT NULL CHECK (length(reason) BETWEEN 1 AND 500),
    order_no    UUID,
    created_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    CHECK ((kind IN ('purchase', 'refund')) = (order_no IS NOT NULL))
);
CREATE INDEX wallet_ledger_user_idx ON wallet_ledger (user_id, id);
-- Refund credits by order (the I4 check joins them to an event's orders).
CREATE UNIQUE INDEX wallet_ledger_refund_idx ON wallet_ledger (order_no) WHERE kind = 'refund';
CREATE TRIGGER wallet_ledger_append_only BEFORE UPDATE OR DELETE ON wallet_ledger
    FOR EACH ROW EXECUTE FUNCTION forbid_mutation();

-- Wallets from before the ledger: one opening row each, so the sum of every
-- wallet's ledger is its balance from the start.
INSERT INTO wallet_ledger (user_id, delta, kind, reason)
SELECT user_id, balance, 'seed', 'opening balance (ledger introduced)'
FROM wallets WHERE balance <> 0;

CREATE TABLE refunds (
    order_no        UUID        PRIMARY KEY,
    event_id        BIGINT      NOT NULL REFERENCES events (id),
    user_id         BIGINT      NOT NULL,
    quantity        INTEGER     NOT NULL CHECK (quantity > 0),
    amount          BIGINT      NOT NULL CHECK (amount >= 0),
    -- 'cancel': the shopper's own, within the event's window; 'refund': an operator's.
    kind            TEXT        NOT NULL CHECK (kind IN ('cancel', 'refund')),
    reason          TEXT        NOT NULL CHECK (length(reason) BETWEEN 1 AND 500),
    stock_returned  BOOLEAN     NOT NULL DEFAULT false,
    created_at      TIMESTAMPTZ NOT NULL DEFAULT now(),
    returned_at     TIMESTAMPTZ
);
CREATE INDEX refunds_event_idx ON refunds (event_id);
-- What the reconciler finishes: refunds whose units are not back yet.
CREATE INDEX refunds_unreturned_idx ON refunds (event_id, created_at) WHERE NOT stock_returned;

-- A refund row changes once: its units went back.
CREATE FUNCTION refunds_return_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'UPDATE' AND NOT OLD.stock_returned AND NEW.stock_returned
       AND (NEW.order_no, NEW.event_id, NEW.user_id, NEW.quantity, NEW.amount, NEW.kind, NEW.reason, NEW.created_at)
           IS NOT DISTINCT FROM (OLD.order_no, OLD.event_id, OLD.user_id, OLD.quantity, OLD.amount, OLD.kind, OLD.reason, OLD.created_at) THEN
        RETURN NEW;
    END IF;
    RAISE EXCEPTION 'refunds are append-only (stock_returned may only become true)';
END;
$$;
CREATE TRIGGER refunds_return_only BEFORE UPDATE OR DELETE ON refunds
    FOR EACH ROW EXECUTE FUNCTION refunds_return_only();
