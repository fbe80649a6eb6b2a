-- Keys about to be written to the blob store, recorded before the write and removed in the
-- transaction that records the key in its row (an image's file_key, or an entry of its variants).
-- One left behind names an object that no row may refer to: a put whose answer was lost, a process
-- that died between the put and the row. The intent sweep removes such an object, then its intent,
-- minutes later instead of the orphan sweep's hour, and without listing the bucket.
CREATE TABLE blob_intents (
    key        text        PRIMARY KEY,
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX blob_intents_created ON blob_intents (created_at);
