-- depends: 001_create_orders_table
-- The seed's second migration for the order service; the history read
-- (orders of one user, newest first) and the item lookup need their own.
CREATE INDEX orders_status_idx ON orders (status);
CREATE INDEX orders_user_created_idx ON orders (user_id, created_at DESC);
CREATE INDEX order_items_order_idx ON order_items (order_id);
