-- Demo data: valid on PostgreSQL and SQLite. Idempotent.
INSERT INTO conflist_users (user_uri, display_name) VALUES
  ('sip:alice@example.com', 'Alice'),
  ('sip:bob@example.com', 'Bob'),
  ('sip:carol@example.com', 'Carol'),
  ('sip:dave@example.com', 'Dave')
ON CONFLICT DO NOTHING;

INSERT INTO conflist_conferences
  (conference_uri, display_text, subject, free_text, keywords, web_page, maximum_user_count, available_media, starts_at, ends_at)
VALUES
  ('sip:1001@conf.example.com', 'Weekly sync', 'Team status', 'Bring your updates', 'weekly team', 'https://meet.example.com/1001', 50, 'audio,video', '2026-11-24T09:00:00Z', '2026-11-24T10:00:00Z'),
  ('sip:1002@conf.example.com', 'Design review', 'Conference list XML', NULL, 'design', 'https://meet.example.com/1002', 12, 'audio,video,text', '2026-11-25T14:00:00Z', '2026-11-25T15:30:00Z'),
  ('sip:1003@conf.example.com', 'All hands', 'Quarterly <results> & plans', NULL, NULL, 'https://meet.example.com/1003', 500, 'audio,video', '2026-12-01T16:00:00Z', NULL),
  ('sip:1004@conf.example.com', 'Bob''s 1:1', NULL, NULL, NULL, NULL, 2, 'audio', NULL, NULL),
  ('sip:1005@conf.example.com', 'Carol''s standup', 'Daily standup', NULL, 'daily', 'https://meet.example.com/1005', 10, 'audio,video', '2026-11-24T08:30:00Z', '2026-11-24T08:45:00Z')
ON CONFLICT DO NOTHING;

INSERT INTO conflist_members (conference_uri, user_uri, role) VALUES
  ('sip:1001@conf.example.com', 'sip:alice@example.com', 'organizer'),
  ('sip:1001@conf.example.com', 'sip:bob@example.com', 'participant'),
  ('sip:1001@conf.example.com', 'sip:carol@example.com', 'participant'),
  ('sip:1002@conf.example.com', 'sip:alice@example.com', 'participant'),
  ('sip:1002@conf.example.com', 'sip:bob@example.com', 'organizer'),
  ('sip:1003@conf.example.com', 'sip:alice@example.com', 'participant'),
  ('sip:1003@conf.example.com', 'sip:bob@example.com', 'participant'),
  ('sip:1003@conf.example.com', 'sip:carol@example.com', 'participant'),
  ('sip:1003@conf.example.com', 'sip:dave@example.com', 'organizer'),
  ('sip:1004@conf.example.com', 'sip:bob@example.com', 'organizer'),
  ('sip:1004@conf.example.com', 'sip:dave@example.com', 'participant'),
  ('sip:1005@conf.example.com', 'sip:carol@example.com', 'organizer'),
  ('sip:1005@conf.example.com', 'sip:dave@example.com', 'participant')
ON CONFLICT DO NOTHING;

-- The optional meeting fields (migration 0004). Carol's standup recurs every weekday at
-- 09:30 Berlin time, so the list shows its next occurrence.
UPDATE conflist_conferences SET status = 'scheduled', organizer_uri = 'sip:dave@example.com',
  organizer_name = 'Dave', time_zone = 'America/New_York', revision = '1'
  WHERE conference_uri = 'sip:1003@conf.example.com';
UPDATE conflist_conferences SET passcode_required = TRUE, organizer_uri = 'sip:bob@example.com',
  organizer_name = 'Bob', revision = '1'
  WHERE conference_uri = 'sip:1002@conf.example.com';
UPDATE conflist_conferences SET time_zone = 'Europe/Berlin',
  recurrence = 'FREQ=WEEKLY;BYDAY=MO,TU,WE,TH,FR', organizer_uri = 'sip:carol@example.com',
  organizer_name = 'Carol', revision = '1'
  WHERE conference_uri = 'sip:1005@conf.example.com';
UPDATE conflist_members SET response = 'accepted'
  WHERE conference_uri = 'sip:1003@conf.example.com' AND user_uri IN ('sip:alice@example.com', 'sip:dave@example.com');
UPDATE conflist_members SET response = 'needs-action'
  WHERE conference_uri = 'sip:1003@conf.example.com' AND user_uri IN ('sip:bob@example.com', 'sip:carol@example.com');
UPDATE conflist_members SET response = 'tentative'
  WHERE conference_uri = 'sip:1002@conf.example.com' AND user_uri = 'sip:alice@example.com';
