-- SQLite twin of migrations/postgres/0001: same relations and columns; times are ISO 8601 text.
CREATE TABLE IF NOT EXISTS conflist_users (
    user_uri     TEXT PRIMARY KEY,
    display_name TEXT
);

CREATE TABLE IF NOT EXISTS conflist_conferences (
    conference_uri     TEXT PRIMARY KEY,
    display_text       TEXT,
    subject            TEXT,
    free_text          TEXT,
    keywords           TEXT,
    web_page           TEXT,
    maximum_user_count INTEGER,
    available_media    TEXT,
    starts_at          TEXT,
    ends_at            TEXT
);

CREATE TABLE IF NOT EXISTS conflist_members (
    conference_uri TEXT NOT NULL REFERENCES conflist_conferences (conference_uri) ON DELETE CASCADE,
    user_uri       TEXT NOT NULL,
    role           TEXT NOT NULL DEFAULT 'participant',
    PRIMARY KEY (conference_uri, user_uri)
);

CREATE INDEX IF NOT EXISTS conflist_members_by_user ON conflist_members (user_uri);
