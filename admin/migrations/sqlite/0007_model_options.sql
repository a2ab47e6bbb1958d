-- Operator options of a model (edgeway_core::routing::ModelOptions) as JSON;
-- NULL = every option off.
ALTER TABLE models ADD COLUMN options TEXT;
