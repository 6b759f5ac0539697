-- depends: 001_create_search_documents
-- The index is fed by CDC: each document remembers the LSN of the change it
-- last applied, and a re-delivered (or older) change is ignored.
ALTER TABLE search_documents ADD COLUMN source_lsn BIGINT NOT NULL DEFAULT 0;
CREATE TABLE search_tombstones (
    product_id UUID PRIMARY KEY,
    source_lsn BIGINT NOT NULL
);
