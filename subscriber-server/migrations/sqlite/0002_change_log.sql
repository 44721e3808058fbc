-- Change log for the embedded SQLite default: filled by triggers on the reference tables,
-- read by the server on a short interval (SQLite has no LISTEN). One writer at a time, so
-- ids appear in commit order.
CREATE TABLE IF NOT EXISTS conflist_changes (
    id             INTEGER PRIMARY KEY AUTOINCREMENT,
    conference_uri TEXT NOT NULL,
    changed_at     TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
);

CREATE TRIGGER IF NOT EXISTS conflist_conferences_ins AFTER INSERT ON conflist_conferences
BEGIN INSERT INTO conflist_changes (conference_uri) VALUES (NEW.conference_uri); END;
CREATE TRIGGER IF NOT EXISTS conflist_conferences_upd AFTER UPDATE ON conflist_conferences
BEGIN
    INSERT INTO conflist_changes (conference_uri) VALUES (OLD.conference_uri);
    INSERT INTO conflist_changes (conference_uri) SELECT NEW.conference_uri WHERE NEW.conference_uri <> OLD.conference_uri;
END;
CREATE TRIGGER IF NOT EXISTS conflist_conferences_del AFTER DELETE ON conflist_conferences
BEGIN INSERT INTO conflist_changes (conference_uri) VALUES (OLD.conference_uri); END;

CREATE TRIGGER IF NOT EXISTS conflist_members_ins AFTER INSERT ON conflist_members
BEGIN INSERT INTO conflist_changes (conference_uri) VALUES (NEW.conference_uri); END;
CREATE TRIGGER IF NOT EXISTS conflist_members_upd AFTER UPDATE ON conflist_members
BEGIN
    INSERT INTO conflist_changes (conference_uri) VALUES (OLD.conference_uri);
    INSERT INTO conflist_changes (conference_uri) SELECT NEW.conference_uri WHERE NEW.conference_uri <> OLD.conference_uri;
END;
CREATE TRIGGER IF NOT EXISTS conflist_members_del AFTER DELETE ON conflist_members
BEGIN INSERT INTO conflist_changes (conference_uri) VALUES (OLD.conference_uri); END;
