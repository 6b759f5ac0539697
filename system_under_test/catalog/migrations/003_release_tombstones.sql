-- depends: 002_create_inventory
-- An order whose stock was released (its saga compensated) may never reserve
-- again: a reservation that arrives after its release is refused.
CREATE TABLE released_orders (
    order_id UUID PRIMARY KEY,
    released_at TIMESTAMP WITH TIME ZONE NOT NULL DEFAULT CURRENT_TIMESTAMP
);
