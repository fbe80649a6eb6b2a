-- When the image's job was last confirmed by the queue; NULL: never (the sweeper publishes it again).
ALTER TABLE images ADD COLUMN queued_at timestamptz;
