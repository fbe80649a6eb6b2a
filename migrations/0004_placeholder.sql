-- A BlurHash of each processed image (placeholder.go), painted by a page before its thumbnail loads.
-- Empty until the image is ready.
ALTER TABLE images ADD COLUMN placeholder text NOT NULL DEFAULT '';
