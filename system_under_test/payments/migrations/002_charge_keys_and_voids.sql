-- depends: 001_create_payments_table
-- A charge is idempotent by its client-chosen key (the orders service uses
-- the order id, so a retry can never charge twice); a cancelled order leaves
-- a void tombstone that refuses every later charge for it.
ALTER TABLE payments ADD COLUMN charge_key VARCHAR(255);
UPDATE payments SET charge_key = order_id::text WHERE charge_key IS NULL;
ALTER TABLE payments ALTER COLUMN charge_key SET NOT NULL;
ALTER TABLE payments DROP CONSTRAINT payments_order_id_key;
ALTER TABLE payments ADD CONSTRAINT payments_charge_key_key UNIQUE (charge_key);
CREATE INDEX payments_order_idx ON payments (order_id);
DELETE FROM payments WHERE status = 'VOIDED';

CREATE TABLE voided_orders (
    order_id UUID PRIMARY KEY,
    voided_at TIMESTAMP WITH TIME ZONE NOT NULL DEFAULT CURRENT_TIMESTAMP
);
