-- Seed §4.1, 注文サービス (PostgreSQL), exactly as given.
CREATE TABLE orders (
    id UUID PRIMARY KEY DEFAULT gen_random_uuid(),
    user_id UUID NOT NULL, -- 参照のみ、外部キー制約は設定しない
    total_amount DECIMAL(10,2) NOT NULL,
    status VARCHAR(50) NOT NULL,
    created_at TIMESTAMP WITH TIME ZONE DEFAULT CURRENT_TIMESTAMP
);

CREATE TABLE order_items (
    id UUID PRIMARY KEY DEFAULT gen_random_uuid(),
    order_id UUID REFERENCES orders(id),
    product_id UUID NOT NULL, -- 商品サービス参照
    quantity INTEGER NOT NULL,
    unit_price DECIMAL(10,2) NOT NULL
);
