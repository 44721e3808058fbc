-- Worked example, second variant (README "Use your own database"): the operator schema of
-- docs/operator-schema.sql with meeting fields of its own, mapped onto the optional columns
-- of the contract as well: a status, an organiser, a time zone and a recurrence on rooms,
-- and each member's answer to the invitation on room_access. The operator's values are not
-- conflist's, so the views translate them. The other optional columns (recurrence_exdates,
-- revision, passcode_required) are simply not there: absent columns are read as NULL.
-- Run against PostgreSQL; the system test `operator_schema` runs this file as it is.

CREATE TABLE accounts (
    id        SERIAL PRIMARY KEY,
    login     TEXT NOT NULL UNIQUE,
    full_name TEXT
);
CREATE TABLE rooms (
    id           SERIAL PRIMARY KEY,
    title        TEXT NOT NULL,
    topic        TEXT,
    seats        INTEGER,
    with_video   BOOLEAN NOT NULL DEFAULT true,
    opens_at     TIMESTAMPTZ,             -- the first occurrence when the room recurs
    closes_at    TIMESTAMPTZ,
    phase        TEXT NOT NULL DEFAULT 'planned'
                 CHECK (phase IN ('planned', 'running', 'over', 'called_off')),
    organiser_id INTEGER REFERENCES accounts (id) ON DELETE SET NULL,
    zone         TEXT,                    -- IANA time zone, e.g. Asia/Tokyo
    repeats      TEXT                     -- an RFC 5545 RRULE value, e.g. FREQ=DAILY
);
CREATE TABLE room_access (
    room_id    INTEGER NOT NULL REFERENCES rooms (id) ON DELETE CASCADE,
    account_id INTEGER NOT NULL REFERENCES accounts (id) ON DELETE CASCADE,
    is_host    BOOLEAN NOT NULL DEFAULT false,
    rsvp       TEXT CHECK (rsvp IN ('yes', 'no', 'maybe')),   -- NULL: not answered yet
    PRIMARY KEY (room_id, account_id)
);

INSERT INTO accounts (login, full_name) VALUES ('erin', 'Erin Example'), ('frank', 'Frank Example');
INSERT INTO rooms (title, topic, seats, with_video, opens_at, closes_at, phase, organiser_id, zone, repeats) VALUES
  ('Board meeting', 'Budget', 8, true, '2026-12-01T10:00:00Z', '2026-12-01T11:00:00Z',
   'planned', 1, 'Europe/Berlin', NULL),
  ('Support line', NULL, 30, false, NULL, NULL, 'running', NULL, NULL, NULL),
  -- Every day at 09:00 Tokyo time (00:00 UTC), for 15 minutes.
  ('Daily check-in', 'Blockers', 6, true, '2026-01-05T00:00:00Z', '2026-01-05T00:15:00Z',
   'planned', 2, 'Asia/Tokyo', 'FREQ=DAILY');
INSERT INTO room_access (room_id, account_id, is_host, rsvp) VALUES
  (1, 1, true, 'yes'), (1, 2, false, 'maybe'), (2, 2, true, NULL), (3, 2, true, 'yes'), (3, 1, false, 'no');

-- The contract: the required columns as in docs/operator-schema.sql, then the optional ones.
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
       r.closes_at                                          AS ends_at,
       CASE r.phase WHEN 'planned' THEN 'scheduled' WHEN 'running' THEN 'active'
                    WHEN 'over' THEN 'ended' WHEN 'called_off' THEN 'cancelled' END AS status,
       'sip:' || o.login || '@example.com'                  AS organizer_uri,
       o.full_name                                          AS organizer_name,
       r.zone                                               AS time_zone,
       r.repeats                                            AS recurrence
FROM rooms r
LEFT JOIN accounts o ON o.id = r.organiser_id;

CREATE VIEW conflist_members AS
SELECT 'sip:room-' || ra.room_id || '@conf.example.com'    AS conference_uri,
       'sip:' || a.login || '@example.com'                  AS user_uri,
       CASE WHEN ra.is_host THEN 'organizer' ELSE 'participant' END AS role,
       CASE ra.rsvp WHEN 'yes' THEN 'accepted' WHEN 'no' THEN 'declined'
                    WHEN 'maybe' THEN 'tentative' ELSE 'needs-action' END AS response
FROM room_access ra
JOIN accounts a ON a.id = ra.account_id;
