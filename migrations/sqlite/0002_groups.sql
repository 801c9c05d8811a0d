CREATE TABLE groups (
    id             TEXT PRIMARY KEY,
    campaign_id    TEXT NOT NULL REFERENCES campaigns (id),
    leader_user_id TEXT NOT NULL,
    size           INTEGER NOT NULL,
    status         TEXT NOT NULL,
    created_at_ms  INTEGER NOT NULL,
    expires_at_ms  INTEGER NOT NULL,
    event_ms       INTEGER NOT NULL,
    event_seq      INTEGER NOT NULL
);
CREATE INDEX groups_by_campaign ON groups (campaign_id, status);
CREATE INDEX reservations_by_group ON reservations (group_id) WHERE group_id IS NOT NULL;
