-- Accounts, images and the secrets every replica shares.

CREATE TABLE users (
    id            bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    username      text        NOT NULL CHECK (char_length(username) BETWEEN 3 AND 32),
    password_hash text        NOT NULL,
    created_at    timestamptz NOT NULL DEFAULT now()
);
-- Usernames are unique whatever their case: "Alice" and "alice" are one account.
CREATE UNIQUE INDEX users_username_key ON users (lower(username));

-- Secrets generated once and shared by every replica (the JWT key when SECRET_KEY is unset).
CREATE TABLE app_secrets (
    name       text        PRIMARY KEY,
    value      bytea       NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE images (
    id           bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    owner_id     bigint      NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    name         text        NOT NULL CHECK (char_length(name) BETWEEN 1 AND 255),
    tags         text[]      NOT NULL DEFAULT '{}',
    status       text        NOT NULL DEFAULT 'pending'
                             CHECK (status IN ('pending', 'processing', 'ready', 'failed')),
    error        text        NOT NULL DEFAULT '',
    content_type text        NOT NULL,
    width        integer     NOT NULL CHECK (width > 0),
    height       integer     NOT NULL CHECK (height > 0),
    size         bigint      NOT NULL CHECK (size >= 0),
    sha256       text        NOT NULL,
    -- Where the original lives, relative to UPLOAD_DIR.
    file_key     text        NOT NULL UNIQUE,
    -- Finished variants: {"thumb_100": {"width":…, "height":…, "size":…, "content_type":…, "key":…}, …}
    variants     jsonb       NOT NULL DEFAULT '{}',
    -- Processing bookkeeping: attempts made, and until when a worker holds the job.
    attempts     integer     NOT NULL DEFAULT 0,
    lease_until  timestamptz,
    created_at   timestamptz NOT NULL DEFAULT now(),
    updated_at   timestamptz NOT NULL DEFAULT now()
);
-- A user's images, newest first.
CREATE INDEX images_owner_created ON images (owner_id, created_at DESC, id DESC);
CREATE INDEX images_tags ON images USING gin (tags);
-- Work not finished, for the sweeper.
CREATE INDEX images_unfinished ON images (status, lease_until) WHERE status IN ('pending', 'processing');
