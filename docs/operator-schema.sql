-- Worked example (README "Use your own database"): an operator schema shaped nothing like
-- conflist's, mapped onto the two contract relations with views. Run against PostgreSQL;
-- the system test `operator_schema` runs this file as it is.

-- The operator's own tables: integer keys, logins instead of SIP URIs, host flag instead
-- of a role, time window in two columns, media as a boolean pair. The README installs
-- triggers on rooms and room_access only: a change to accounts (a login renamed) is not
-- logged, and reaches subscribers through the server's periodic verification
-- (--verify-interval) instead.
CREATE TABLE accounts (
    id    SERIAL PRIMARY KEY,
    login TEXT NOT NULL UNIQUE
);
CREATE TABLE rooms (
    id         SERIAL PRIMARY KEY,
    title      TEXT NOT NULL,
    topic      TEXT,
    seats      INTEGER,
    with_video BOOLEAN NOT NULL DEFAULT true,
    opens_at   TIMESTAMPTZ,
    closes_at  TIMESTAMPTZ
);
CREATE TABLE room_access (
    room_id    INTEGER NOT NULL REFERENCES rooms (id) ON DELETE CASCADE,
    account_id INTEGER NOT NULL REFERENCES accounts (id) ON DELETE CASCADE,
    is_host    BOOLEAN NOT NULL DEFAULT false,
    PRIMARY KEY (room_id, account_id)
);

INSERT INTO accounts (login) VALUES ('erin'), ('frank');
INSERT INTO rooms (title, topic, seats, with_video, opens_at, closes_at) VALUES
  ('Board meeting', 'Budget', 8, true, '2026-12-01T10:00:00Z', '2026-12-01T11:00:00Z'),
  ('Support line', NULL, 30, false, NULL, NULL);
INSERT INTO room_access (room_id, account_id, is_host) VALUES (1, 1, true), (1, 2, false), (2, 2, true);

-- The contract: conflist reads only these two relations.
CREATE VIEW conflist_conferences AS
SELECT 'sip:room-' || r.id || '@conf.example.com'          AS conference_uri,
       r.title                                              AS display_text,
       r.topic                                              AS subject,
       NULL::TEXT                                           AS free_text,
       NULL::TEXT                                           AS keywords,
       'https://meet.example.com/rooms/' || r.id            AS web_page,
       r.seats                                              AS maximum_user_count,
       CASE WHEN r.with_video THEN 'audio,video' ELSE 'audio' END AS available_media,
       r.opens_at                                           AS starts_at,
       r.closes_at                                          AS ends_at
FROM rooms r;

CREATE VIEW conflist_members AS
SELECT 'sip:room-' || ra.room_id || '@conf.example.com'    AS conference_uri,
       'sip:' || a.login || '@example.com'                  AS user_uri,
       CASE WHEN ra.is_host THEN 'organizer' ELSE 'participant' END AS role
FROM room_access ra
JOIN accounts a ON a.id = ra.account_id;
