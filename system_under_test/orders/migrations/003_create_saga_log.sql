-- depends: 002_add_status_index
-- The saga log: one row per create-order saga, written before each step so
-- that a restarted orchestrator knows which steps may have run.  Kept apart
-- from the seed's tables, which stay exactly as §4.1 gives them.
CREATE TABLE sagas (
    id UUID PRIMARY KEY,
    order_id UUID NOT NULL UNIQUE,
    idempotency_key VARCHAR(255) UNIQUE,
    user_id UUID NOT NULL,
    request JSONB NOT NULL,
    state VARCHAR(30) NOT NULL,
    steps JSONB NOT NULL DEFAULT '[]'::jsonb,
    error TEXT,
    created_at TIMESTAMP WITH TIME ZONE NOT NULL DEFAULT CURRENT_TIMESTAMP,
    updated_at TIMESTAMP WITH TIME ZONE NOT NULL DEFAULT CURRENT_TIMESTAMP
);
CREATE INDEX sagas_open_idx ON sagas (state) WHERE state NOT IN ('COMPLETED', 'COMPENSATED', 'FAILED');
