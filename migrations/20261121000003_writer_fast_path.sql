-- The writer inserts an order, its payment and its wallet debit in one
-- transaction, right after the versioned wallet UPDATE that made the debit
-- possible. The foreign keys from payments and wallet_debits were re-checking,
-- row by row (a lookup and a row lock each), what that transaction already
-- guarantees; at batch sizes of hundreds they were a large share of the
-- writer's cost. The invariant checker verifies payments <-> confirmed orders
-- <-> debits after every load and fault test.
ALTER TABLE payments DROP CONSTRAINT payments_order_no_fkey;
ALTER TABLE wallet_debits DROP CONSTRAINT wallet_debits_order_no_fkey;
ALTER TABLE wallet_debits DROP CONSTRAINT wallet_debits_user_id_fkey;

-- order_no is the natural key of both; the surrogate ids only added an index.
ALTER TABLE payments DROP CONSTRAINT payments_order_no_key;
ALTER TABLE payments DROP COLUMN id;
ALTER TABLE payments ADD PRIMARY KEY (order_no);
ALTER TABLE wallet_debits DROP CONSTRAINT wallet_debits_order_no_key;
ALTER TABLE wallet_debits DROP COLUMN id;
ALTER TABLE wallet_debits ADD PRIMARY KEY (order_no);

-- Room on each page for HOT updates of balance/version (no index write).
ALTER TABLE wallets SET (fillfactor = 80);
