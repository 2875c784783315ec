-- Stock buckets: a hot event's stock split across N Redis hash tags (so
-- across cluster slots and masters). Fixed at creation: a shopper's home
-- bucket is user_id % stock_buckets for the life of the sale.
ALTER TABLE events
    ADD COLUMN stock_buckets INT NOT NULL DEFAULT 1
        CHECK (stock_buckets BETWEEN 1 AND 64);
