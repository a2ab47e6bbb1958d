-- Test keys: a key with pin_allowed may pin a request to one channel with
-- the unsigned x-edgeway-pin-channel header (channel tests).
ALTER TABLE api_keys ADD COLUMN pin_allowed BIGINT NOT NULL DEFAULT 0;
