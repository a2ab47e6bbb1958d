-- The public model that served when it is not the one asked for (a fallback),
-- and every upstream attempt of the request as a JSON array ('' = none).
ALTER TABLE usage_events ADD COLUMN served_model TEXT NOT NULL DEFAULT '';
ALTER TABLE usage_events ADD COLUMN attempts TEXT NOT NULL DEFAULT '';
