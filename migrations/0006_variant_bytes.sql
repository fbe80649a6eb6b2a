-- What an image's variants take in storage, counted against USER_QUOTA_BYTES beside its original:
-- the worst case estimated from the header while it waits (a reservation), the real sizes once it is
-- ready, nothing once it has failed.
ALTER TABLE images ADD COLUMN variant_bytes bigint NOT NULL DEFAULT 0 CHECK (variant_bytes >= 0);
UPDATE images SET variant_bytes = (SELECT COALESCE(sum((v->>'size')::bigint), 0) FROM jsonb_each(variants) AS e(k, v))
WHERE variants <> '{}';
