-- depends: 001_create_products_table
-- Inventory: available + reserved + sold is constant per product except for
-- restocks; the CHECKs make overselling impossible at the storage level.
CREATE TABLE inventory (
    product_id UUID PRIMARY KEY REFERENCES products(id),
    available INTEGER NOT NULL CHECK (available >= 0),
    reserved INTEGER NOT NULL DEFAULT 0 CHECK (reserved >= 0),
    sold INTEGER NOT NULL DEFAULT 0 CHECK (sold >= 0),
    initial INTEGER NOT NULL CHECK (initial >= 0)
);

-- One row per (order, product): reserve/confirm/release are idempotent by order id.
CREATE TABLE reservations (
    order_id UUID NOT NULL,
    product_id UUID NOT NULL REFERENCES products(id),
    quantity INTEGER NOT NULL CHECK (quantity > 0),
    state VARCHAR(20) NOT NULL CHECK (state IN ('RESERVED', 'CONFIRMED', 'RELEASED')),
    created_at TIMESTAMP WITH TIME ZONE NOT NULL DEFAULT CURRENT_TIMESTAMP,
    updated_at TIMESTAMP WITH TIME ZONE NOT NULL DEFAULT CURRENT_TIMESTAMP,
    PRIMARY KEY (order_id, product_id)
);
CREATE INDEX reservations_state_idx ON reservations (state) WHERE state = 'RESERVED';
