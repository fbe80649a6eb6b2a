-- Counts kept, not counted: for each owner, how many images (tag '') and how many bytes they store
-- (originals and variants), and how many images carry each tag. Triggers keep them in the same
-- transaction as every write to images, so X-Total-Count, quotas and `me` cost one index lookup at
-- any library size. The rows of one write are changed in (owner, tag) order, so two writes of one
-- owner never wait for each other in opposite orders.
CREATE TABLE image_counts (
    owner_id bigint NOT NULL, -- no foreign key: the cascade from a deleted user's images must not race it

    tag      text   NOT NULL, -- '': every image of the owner
    n        bigint NOT NULL DEFAULT 0,
    bytes    bigint NOT NULL DEFAULT 0, -- for tag '' only: size + variant_bytes of every image
    PRIMARY KEY (owner_id, tag)
);

CREATE FUNCTION image_counts_apply() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    owner bigint;
    oldTags text[] := '{}';
    newTags text[] := '{}';
    oldBytes bigint := 0;
    newBytes bigint := 0;
    inOld int := 0;
    inNew int := 0;
BEGIN
    IF TG_OP <> 'INSERT' THEN
        owner := OLD.owner_id;
        oldTags := OLD.tags;
        oldBytes := OLD.size + OLD.variant_bytes;
        inOld := 1;
    END IF;
    IF TG_OP <> 'DELETE' THEN
        owner := NEW.owner_id;
        newTags := NEW.tags;
        newBytes := NEW.size + NEW.variant_bytes;
        inNew := 1;
    END IF;
    INSERT INTO image_counts AS c (owner_id, tag, n, bytes)
    SELECT owner, d.tag, sum(d.dn), sum(d.db) FROM (
        SELECT '' AS tag, inNew - inOld AS dn, newBytes - oldBytes AS db
        UNION ALL SELECT t, -1, 0 FROM unnest(oldTags) AS t
        UNION ALL SELECT t, 1, 0 FROM unnest(newTags) AS t
    ) d
    GROUP BY d.tag
    HAVING sum(d.dn) <> 0 OR sum(d.db) <> 0
    ORDER BY d.tag
    ON CONFLICT (owner_id, tag) DO UPDATE SET n = c.n + EXCLUDED.n, bytes = c.bytes + EXCLUDED.bytes;
    RETURN NULL;
END
$$;

CREATE TRIGGER images_counts_insert_delete AFTER INSERT OR DELETE ON images
    FOR EACH ROW EXECUTE FUNCTION image_counts_apply();
CREATE TRIGGER images_counts_update AFTER UPDATE ON images
    FOR EACH ROW
    WHEN ((OLD.tags, OLD.size, OLD.variant_bytes) IS DISTINCT FROM (NEW.tags, NEW.size, NEW.variant_bytes))
    EXECUTE FUNCTION image_counts_apply();

-- The counts of what is there already (one pass of each kind; the triggers above hold every write
-- from here on, and this transaction keeps writes out until it commits).
INSERT INTO image_counts (owner_id, tag, n, bytes)
SELECT owner_id, '', count(*), sum(size + variant_bytes) FROM images GROUP BY owner_id;
INSERT INTO image_counts (owner_id, tag, n, bytes)
SELECT owner_id, t, count(*), 0 FROM images, unnest(tags) AS t GROUP BY owner_id, t;
