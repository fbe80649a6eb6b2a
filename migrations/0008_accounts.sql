-- Accounts people manage. A token carries its account's generation (the gen claim); signing out
-- everywhere or changing the password bumps it, so every token issued before stops working.
ALTER TABLE users ADD COLUMN token_generation bigint NOT NULL DEFAULT 0;
-- A deleted account answers no credential from the moment it is deleted; the account sweep then
-- removes its images (rows and files), its keys and the row itself, resuming where it stopped. The
-- username is free again at once: it is unique among live accounts only.
ALTER TABLE users ADD COLUMN deleted_at timestamptz;
DROP INDEX users_username_key;
CREATE UNIQUE INDEX users_username_key ON users (lower(username)) WHERE deleted_at IS NULL;
CREATE INDEX users_deleted ON users (deleted_at) WHERE deleted_at IS NOT NULL;

-- API keys: named, revocable credentials for scripts. Only a keyed hash of each secret is kept
-- (HMAC-SHA256 under a key derived from the service's secret): the secrets are 256 random bits, so
-- a fast hash is as safe as a slow one, and lets every request find its key by an index lookup.
CREATE TABLE api_keys (
    id           bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    owner_id     bigint      NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    name         text        NOT NULL CHECK (char_length(name) BETWEEN 1 AND 64),
    prefix       text        NOT NULL,
    hash         bytea       NOT NULL UNIQUE,
    created_at   timestamptz NOT NULL DEFAULT now(),
    last_used_at timestamptz,
    expires_at   timestamptz
);
CREATE INDEX api_keys_owner ON api_keys (owner_id, id);
