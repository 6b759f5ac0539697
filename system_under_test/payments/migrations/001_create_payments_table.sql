-- Payments: one per order (idempotent by order id).  A refund flips the
-- status and records when; it never creates a second row.  A refund that
-- arrives before its charge leaves a VOIDED tombstone, so a late charge for
-- that order is refused instead of taking money for a cancelled order.
CREATE TABLE payments (
    id UUID PRIMARY KEY DEFAULT gen_random_uuid(),
    order_id UUID NOT NULL UNIQUE,
    user_id UUID NOT NULL,
    amount DECIMAL(10,2) NOT NULL CHECK (amount >= 0),
    status VARCHAR(20) NOT NULL CHECK (status IN ('CAPTURED', 'DECLINED', 'REFUNDED', 'VOIDED')),
    created_at TIMESTAMP WITH TIME ZONE NOT NULL DEFAULT CURRENT_TIMESTAMP,
    refunded_at TIMESTAMP WITH TIME ZONE
);
CREATE INDEX payments_user_idx ON payments (user_id, created_at DESC);
