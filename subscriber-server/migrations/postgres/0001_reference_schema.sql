-- The conflist reference schema. The server reads only the two contract relations
-- conflist_conferences and conflist_members (README "Database contract"); an operator with
-- another schema provides them as views instead of running this migration's tables.
CREATE TABLE IF NOT EXISTS conflist_users (
    user_uri     TEXT PRIMARY KEY,           -- address of record, e.g. sip:alice@example.com
    display_name TEXT
);

CREATE TABLE IF NOT EXISTS conflist_conferences (
    conference_uri     TEXT PRIMARY KEY,     -- e.g. sip:1001@conf.example.com
    display_text       TEXT,
    subject            TEXT,
    free_text          TEXT,
    keywords           TEXT,                 -- space-separated
    web_page           TEXT,                 -- a service URI with purpose web-page
    maximum_user_count INTEGER,
    available_media    TEXT,                 -- comma-separated media types: 'audio,video'
    starts_at          TIMESTAMPTZ,
    ends_at            TIMESTAMPTZ
);

CREATE TABLE IF NOT EXISTS conflist_members (
    conference_uri TEXT NOT NULL REFERENCES conflist_conferences (conference_uri) ON DELETE CASCADE,
    user_uri       TEXT NOT NULL,
    role           TEXT NOT NULL DEFAULT 'participant',
    PRIMARY KEY (conference_uri, user_uri)
);

CREATE INDEX IF NOT EXISTS conflist_members_by_user ON conflist_members (user_uri);
