-- The operator's request policy (edgeway_core::request_policy::PolicyRule
-- list, as JSON, in order); pushed to the edge inside the routing config.
-- Numbered 0013 to leave 0012 to a migration landing alongside.
ALTER TABLE routing_state ADD COLUMN policy TEXT NOT NULL DEFAULT '[]';
