-- The optional columns of the contract (README "Database contract"): the reference schema
-- has all of them; an operator's views may have any subset.
ALTER TABLE conflist_conferences
    ADD COLUMN IF NOT EXISTS status TEXT
        CHECK (status IN ('scheduled', 'active', 'ended', 'cancelled')),
    ADD COLUMN IF NOT EXISTS organizer_uri TEXT,
    ADD COLUMN IF NOT EXISTS organizer_name TEXT,
    ADD COLUMN IF NOT EXISTS time_zone TEXT,           -- IANA name, e.g. Europe/Berlin
    ADD COLUMN IF NOT EXISTS recurrence TEXT,          -- RFC 5545 RRULE value, e.g. FREQ=WEEKLY;BYDAY=MO
    ADD COLUMN IF NOT EXISTS recurrence_exdates TEXT,  -- RFC 5545 EXDATE values, comma-separated
    ADD COLUMN IF NOT EXISTS revision TEXT,            -- any text that changes with the conference
    ADD COLUMN IF NOT EXISTS passcode_required BOOLEAN;

ALTER TABLE conflist_members
    ADD COLUMN IF NOT EXISTS response TEXT
        CHECK (response IN ('needs-action', 'accepted', 'declined', 'tentative'));
