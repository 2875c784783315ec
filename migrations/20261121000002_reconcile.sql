-- Reconciler bookkeeping: one row per pass, one row per discrepancy found or repaired.

CREATE TABLE reconcile_runs (
    id              BIGSERIAL   PRIMARY KEY,
    started_at      TIMESTAMPTZ NOT NULL,
    finished_at     TIMESTAMPTZ NOT NULL,
    holder          TEXT        NOT NULL,
    events_checked  INTEGER     NOT NULL,
    intents_replayed INTEGER    NOT NULL,
    intents_acked   INTEGER     NOT NULL,
    repairs         INTEGER     NOT NULL,
    discrepancies   INTEGER     NOT NULL
);

CREATE TABLE reconcile_discrepancies (
    id          BIGSERIAL   PRIMARY KEY,
    run_id      BIGINT      NOT NULL REFERENCES reconcile_runs (id),
    event_id    BIGINT      NOT NULL,
    kind        TEXT        NOT NULL,
    subject     TEXT,
    before      TEXT        NOT NULL,
    after       TEXT        NOT NULL,
    repaired    BOOLEAN     NOT NULL,
    created_at  TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX reconcile_discrepancies_event_idx ON reconcile_discrepancies (event_id, created_at);
