-- The search index.  The seed uses Elasticsearch 7; the embedded stack uses
-- PostgreSQL full-text search: a tsvector per product with a GIN index.
CREATE TABLE search_documents (
    product_id UUID PRIMARY KEY,
    version INTEGER NOT NULL,
    name TEXT NOT NULL,
    description TEXT NOT NULL DEFAULT '',
    category TEXT NOT NULL DEFAULT '',
    price NUMERIC(10,2),
    tsv TSVECTOR GENERATED ALWAYS AS (
        setweight(to_tsvector('english', coalesce(name, '')), 'A') ||
        setweight(to_tsvector('english', coalesce(category, '')), 'B') ||
        setweight(to_tsvector('english', coalesce(description, '')), 'C')
    ) STORED,
    indexed_at TIMESTAMP WITH TIME ZONE NOT NULL DEFAULT CURRENT_TIMESTAMP
);
CREATE INDEX search_documents_tsv_idx ON search_documents USING GIN (tsv);
