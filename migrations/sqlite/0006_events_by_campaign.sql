-- The feed filtered by campaign (`GET /v1/events?campaign_id=`) reads this campaign's events
-- in cursor order without walking everyone else's.
CREATE INDEX events_by_campaign ON events (campaign_id, cursor);
