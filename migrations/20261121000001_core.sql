-- Core schema: events, wallets, orders, payments and the immutable wallet debit ledger.
-- Postgres is the source of truth for money; Redis holds the live sale state.

CREATE TABLE events (
    id              BIGSERIAL PRIMARY KEY,
    name            TEXT        NOT NULL CHECK (length(name) BETWEEN 1 AND 200),
    price           BIGINT      NOT NULL CHECK (price >= 0),
    stock_total     BIGINT      NOT NULL CHECK (stock_total >= 0),
    -- Σ quantity of confirmed orders; bumped by the writers in the batch transaction.
    sold            BIGINT      NOT NULL DEFAULT 0 CHECK (sold >= 0 AND sold <= stock_total),
    per_user_limit  INTEGER     NOT NULL CHECK (per_user_limit >= 1),
    starts_at       TIMESTAMPTZ NOT NULL,
    ends_at         TIMESTAMPTZ NOT NULL,
    preheated_at    TIMESTAMPTZ,
    version         BIGINT      NOT NULL DEFAULT 0,
    created_at      TIMESTAMPTZ NOT NULL DEFAULT now(),
    CHECK (ends_at > starts_at)
);

CREATE TABLE wallets (
    user_id     BIGINT      PRIMARY KEY CHECK (user_id > 0),
    balance     BIGINT      NOT NULL CHECK (balance >= 0),
    version     BIGINT      NOT NULL DEFAULT 0,
    updated_at  TIMESTAMPTZ NOT NULL DEFAULT now()
);

CREATE TABLE orders (
    order_no        UUID        PRIMARY KEY,
    event_id        BIGINT      NOT NULL REFERENCES events (id),
    user_id         BIGINT      NOT NULL CHECK (user_id > 0),
    quantity        INTEGER     NOT NULL CHECK (quantity > 0),
    amount          BIGINT      NOT NULL CHECK (amount >= 0),
    status          TEXT        NOT NULL CHECK (status IN ('confirmed', 'failed')),
    failure_reason  TEXT,
    -- When Redis accepted the purchase (the intent's time), not when it was persisted.
    created_at      TIMESTAMPTZ NOT NULL,
    persisted_at    TIMESTAMPTZ NOT NULL DEFAULT now(),
    CHECK ((status = 'failed') = (failure_reason IS NOT NULL))
);
CREATE INDEX orders_user_created_idx ON orders (user_id, created_at DESC);
CREATE INDEX orders_event_user_idx ON orders (event_id, user_id);

-- One payment per confirmed order.
CREATE TABLE payments (
    id          BIGSERIAL   PRIMARY KEY,
    order_no    UUID        NOT NULL UNIQUE REFERENCES orders (order_no),
    event_id    BIGINT      NOT NULL,
    user_id     BIGINT      NOT NULL,
    amount      BIGINT      NOT NULL CHECK (amount >= 0),
    created_at  TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX payments_event_idx ON payments (event_id);

-- Immutable record of every wallet debit, with the balance and version it produced.
CREATE TABLE wallet_debits (
    id              BIGSERIAL   PRIMARY KEY,
    order_no        UUID        NOT NULL UNIQUE REFERENCES orders (order_no),
    user_id         BIGINT      NOT NULL REFERENCES wallets (user_id),
    amount          BIGINT      NOT NULL CHECK (amount >= 0),
    balance_after   BIGINT      NOT NULL CHECK (balance_after >= 0),
    version_after   BIGINT      NOT NULL,
    created_at      TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX wallet_debits_user_idx ON wallet_debits (user_id);

-- Money rows are append-only: a correction is a new row, never an edit.
CREATE FUNCTION forbid_mutation() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION '% is append-only', TG_TABLE_NAME;
END;
$$;
CREATE TRIGGER payments_append_only BEFORE UPDATE OR DELETE ON payments
    FOR EACH ROW EXECUTE FUNCTION forbid_mutation();
CREATE TRIGGER wallet_debits_append_only BEFORE UPDATE OR DELETE ON wallet_debits
    FOR EACH ROW EXECUTE FUNCTION forbid_mutation();
