-- depends: 003_create_saga_log
-- Change data capture (seed §6): orders and their lines feed analytics.
ALTER TABLE orders REPLICA IDENTITY FULL;
ALTER TABLE order_items REPLICA IDENTITY FULL;
CREATE PUBLICATION msdb_cdc FOR TABLE orders, order_items;

-- Seed §6.1 データレプリカ: a read-only copy of user data, kept by CDC from
-- the users database; each row remembers the LSN of the change it applied.
CREATE TABLE user_replica (
    id UUID PRIMARY KEY,
    email VARCHAR(255),
    first_name VARCHAR(100),
    last_name VARCHAR(100),
    is_active BOOLEAN,
    deleted BOOLEAN NOT NULL DEFAULT false,
    source_lsn BIGINT NOT NULL,
    replicated_at TIMESTAMP WITH TIME ZONE NOT NULL DEFAULT CURRENT_TIMESTAMP
);
