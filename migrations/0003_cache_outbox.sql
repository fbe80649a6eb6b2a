-- Pending cache invalidations. A trigger records one in the same transaction as every write to
-- images that the API can see, so the write cannot commit without it: a replica that wrote but could
-- not reach Redis (or died before it tried) leaves it here, and whichever replica drains the table
-- next bumps that user's cache generation. Writes that change only bookkeeping (attempts, leases,
-- queue confirms) are not recorded: no cached answer shows them.
CREATE TABLE cache_outbox (
    id       bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    owner_id bigint NOT NULL
);

CREATE FUNCTION cache_outbox_record() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'DELETE' THEN
        INSERT INTO cache_outbox (owner_id) VALUES (OLD.owner_id);
        RETURN OLD;
    END IF;
    INSERT INTO cache_outbox (owner_id) VALUES (NEW.owner_id);
    RETURN NEW;
END
$$;

CREATE TRIGGER images_cache_outbox_insert_delete AFTER INSERT OR DELETE ON images
    FOR EACH ROW EXECUTE FUNCTION cache_outbox_record();

CREATE TRIGGER images_cache_outbox_update AFTER UPDATE ON images
    FOR EACH ROW
    WHEN ((OLD.name, OLD.tags, OLD.status, OLD.error, OLD.variants, OLD.updated_at, OLD.owner_id)
          IS DISTINCT FROM (NEW.name, NEW.tags, NEW.status, NEW.error, NEW.variants, NEW.updated_at, NEW.owner_id))
    EXECUTE FUNCTION cache_outbox_record();
