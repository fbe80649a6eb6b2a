-- A user's unfinished jobs, in order: their number caps a user's backlog (JOBS_PER_USER) and an image's
-- place among them is its job's priority (jobPriority), so each stays one index range however large
-- the library.
CREATE INDEX images_owner_unfinished ON images (owner_id, id) WHERE status IN ('pending', 'processing');
