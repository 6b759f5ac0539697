-- depends: 002_charge_keys_and_voids
-- A charge in one round trip.  The advisory lock serialises a charge and a
-- refund of the same order; inside a PL/pgSQL function every statement takes
-- a fresh snapshot (READ COMMITTED), so the query after the lock sees what a
-- refund that held it committed.  As an explicit transaction from the
-- service this took four statements in a pipeline and cost the payments
-- service ~30% of its CPU in psycopg's pipeline machinery.
-- The order's lock, in one place: charge_once below and the service's own
-- transactions take it through this function, so they can never disagree on the key.
CREATE FUNCTION order_lock(p_order UUID) RETURNS void LANGUAGE sql AS $$
    SELECT pg_advisory_xact_lock(hashtextextended(p_order::text, 7))
$$;

CREATE FUNCTION charge_once(p_order UUID, p_user UUID, p_amount DECIMAL(10,2), p_status VARCHAR,
                            p_key VARCHAR)
RETURNS TABLE (id UUID, order_id UUID, user_id UUID, amount DECIMAL(10,2), status VARCHAR,
               charge_key VARCHAR, created_at TIMESTAMP WITH TIME ZONE,
               refunded_at TIMESTAMP WITH TIME ZONE, created BOOLEAN, voided BOOLEAN)
LANGUAGE plpgsql AS $$
#variable_conflict use_column
BEGIN
    PERFORM order_lock(p_order);
    IF EXISTS (SELECT 1 FROM voided_orders v WHERE v.order_id = p_order) THEN
        RETURN QUERY SELECT NULL::UUID, NULL::UUID, NULL::UUID, NULL::DECIMAL(10,2), NULL::VARCHAR,
                            NULL::VARCHAR, NULL::TIMESTAMPTZ, NULL::TIMESTAMPTZ, false, true;
        RETURN;
    END IF;
    RETURN QUERY INSERT INTO payments AS p (order_id, user_id, amount, status, charge_key)
        VALUES (p_order, p_user, p_amount, p_status, p_key)
        ON CONFLICT (charge_key) DO NOTHING
        RETURNING p.id, p.order_id, p.user_id, p.amount, p.status, p.charge_key, p.created_at,
                  p.refunded_at, true, false;
    IF NOT FOUND THEN
        RETURN QUERY SELECT p.id, p.order_id, p.user_id, p.amount, p.status, p.charge_key,
                            p.created_at, p.refunded_at, false, false
                     FROM payments p WHERE p.charge_key = p_key;
    END IF;
END
$$;
